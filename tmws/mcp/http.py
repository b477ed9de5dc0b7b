"""MCP over Streamable HTTP, mounted at ``/mcp`` on the service.

Stateless with JSON responses: every POST carries a whole exchange, so any Granian worker
can answer any request and nothing is kept between them. The request passes the same
guards as the HTTP API first (bearer token, then rate limit per namespace); the caller is
then handed to the tools through a context variable, which the SDK's per-request task
inherits.

A handshake-era ``tools/call`` (the agents' hot path) is answered in the request's own
task: parsed and serialised with the SDK's types and its per-version result surface,
handled by the same ``tools/call`` handler as the SDK's server. The SDK's stateless entry
builds a transport, memory streams and a server task per POST, ~5x the CPU of the call
itself (bench/README.md, "MCP"). Everything else, including any request this path cannot
take as it is (malformed, other methods, 2026-era envelopes), goes to the SDK unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

import msgspec
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    CallToolRequestParams,
    JSONRPCRequest,
)
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request as StarletteRequest

from tmws.auth import Principal
from tmws.http.asgi import HTTPError, Message, Receive, Request, Scope, Send
from tmws.http.dispatch import Route
from tmws.inputs import DEFAULT_NAMESPACE
from tmws.mcp.server import create_server, tool_handler

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine
    from tmws.http.guards import Guard

__all__ = ["MCP_PATH", "MCP_ROUTE", "McpEndpoint"]

MCP_PATH: Final = "/mcp"

logger = logging.getLogger("tmws.mcp.http")


async def _never(engine: Any, request: Any) -> Any:  # pragma: no cover - not dispatched
    raise AssertionError("the MCP route is answered by the MCP endpoint")


# What the guards see: any valid token (each tool checks its own scope), rate limited.
MCP_ROUTE: Final = Route("POST", MCP_PATH, _never, "MCP (Streamable HTTP)", scope="")

_principal: ContextVar[Principal] = ContextVar("tmws_mcp_principal")
_CALL_TOOL: Final = "tools/call"
_VERSION_HEADER: Final = b"mcp-protocol-version"
_JSON: Final = b"application/json"


class _SingleCall(msgspec.Struct, frozen=True):
    """A ``tools/call`` this endpoint answers itself."""

    request_id: str | int
    params: CallToolRequestParams
    version: str


class _Response(msgspec.Struct, frozen=True):
    """The JSON-RPC response envelope (``mcp_types.JSONRPCResponse``'s wire form)."""

    id: str | int
    result: dict[str, Any]
    jsonrpc: str = "2.0"


_envelope: Final = msgspec.json.Encoder()


def _single_call(scope: Scope, body: bytes) -> _SingleCall | None:
    """The handshake-era ``tools/call`` in ``body``, or None for the SDK to answer."""
    version: str | None = None
    media_type = b""
    for key, value in scope["headers"]:
        if key == _VERSION_HEADER:
            version = value.decode("latin-1")
        elif key == b"content-type":
            media_type = value.split(b";")[0].strip().lower()
        elif key == b"mcp-session-id":
            return None
    if media_type != _JSON or (version is not None
                               and version not in HANDSHAKE_PROTOCOL_VERSIONS):
        return None
    if not check_accept_headers(StarletteRequest(scope))[0]:
        return None
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(decoded, dict) or decoded.get("method") != _CALL_TOOL:
        return None
    try:
        request = JSONRPCRequest.model_validate(decoded)
        params = CallToolRequestParams.model_validate(request.params or {})
    except ValidationError:
        return None
    return _SingleCall(request.id, params, version or DEFAULT_NEGOTIATED_VERSION)


def _replayed(body: bytes, receive: Receive) -> Receive:
    """``receive`` that hands the SDK the body already read, then the rest of the stream."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class McpEndpoint:
    """The ``/mcp`` endpoint of one worker: its MCP server and the SDK's session manager
    (run by the application's lifespan, :meth:`running`)."""

    def __init__(self, engine: PatternExecutionEngine) -> None:
        self._engine = engine
        server = create_server(lambda: self._engine, _principal.get)
        self._call_tool = tool_handler(lambda: self._engine, _principal.get)
        self._manager = StreamableHTTPSessionManager(
            server, stateless=True, json_response=True,
            max_request_body_size=engine.settings.max_body_bytes)
        self._running = False

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self._manager.run():
            self._running = True
            try:
                yield
            finally:
                self._running = False

    async def handle(self, scope: Scope, receive: Receive, send: Send,
                     guards: Sequence[Guard]) -> None:
        """Run the guards (raising as for any route), then let the SDK answer; the guards'
        headers (the rate-limit counts) go on its response as on any route's."""
        settings = self._engine.settings
        request = Request(scope, receive, settings.max_body_bytes, {}, settings.max_json_depth)
        extra_headers: list[tuple[bytes, bytes]] = []
        for guard in guards:
            extra_headers += await guard.check(MCP_ROUTE, request)
        if not self._running:  # a request still arriving while the worker stops
            raise HTTPError(503, "not_ready", "the service is starting or stopping")
        principal = request.principal
        if principal is None:  # auth off: the default namespace, every scope
            principal = Principal.unrestricted(DEFAULT_NAMESPACE)
        body = await request.json_body()  # the API's size, media-type and depth limits
        token = _principal.set(principal)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and extra_headers:
                message = {**message,
                           "headers": [*message.get("headers", ()), *extra_headers]}
            started = True
            await send(message)

        try:
            call = _single_call(scope, body)
            if call is not None:
                await self._answer(call, send, extra_headers)
                return
            await self._manager.handle_request(scope, _replayed(body, receive), tracked)
        except RuntimeError as exc:
            # At process exit the loop may finalise the SDK's manager before this
            # endpoint learns it stopped: answer as any stopping worker does.
            if started:
                raise
            logger.warning("MCP request refused while the session manager is down: %s", exc)
            raise HTTPError(503, "not_ready", "the service is starting or stopping") from None
        finally:
            _principal.reset(token)

    async def _answer(self, call: _SingleCall, send: Send,
                      headers: list[tuple[bytes, bytes]]) -> None:
        result = await self._call_tool(None, call.params)
        shaped = serialize_server_result(
            _CALL_TOOL, call.version,
            result.model_dump(by_alias=True, mode="json", exclude_none=True))
        payload = _envelope.encode(_Response(call.request_id, shaped))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", _JSON),
                                (b"content-length", str(len(payload)).encode()), *headers]})
        await send({"type": "http.response.body", "body": payload})
