"""MCP over Streamable HTTP, mounted at ``/mcp`` on the service.

Stateless with JSON responses: every POST carries a whole exchange, so any Granian worker
can answer any request and nothing is kept between them. The request passes the same
guards as the HTTP API first (bearer token, then rate limit per namespace); the caller is
then handed to the tools through a context variable, which the SDK's per-request task
inherits.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from tmws.auth import Principal
from tmws.http.asgi import HTTPError, Message, Receive, Request, Scope, Send
from tmws.http.dispatch import Route
from tmws.inputs import DEFAULT_NAMESPACE
from tmws.mcp.server import create_server

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


class McpEndpoint:
    """The ``/mcp`` endpoint of one worker: its MCP server and the SDK's session manager
    (run by the application's lifespan, :meth:`running`)."""

    def __init__(self, engine: PatternExecutionEngine) -> None:
        self._engine = engine
        server = create_server(lambda: self._engine, _principal.get)
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
        """Run the guards (raising as for any route), then let the SDK answer (the guards'
        headers, e.g. rate-limit counts, are not added to its response)."""
        settings = self._engine.settings
        request = Request(scope, receive, settings.max_body_bytes, {}, settings.max_json_depth)
        for guard in guards:
            await guard.check(MCP_ROUTE, request)
        if not self._running:  # a request still arriving while the worker stops
            raise HTTPError(503, "not_ready", "the service is starting or stopping")
        principal = request.principal
        if principal is None:  # auth off: the default namespace, every scope
            principal = Principal.unrestricted(DEFAULT_NAMESPACE)
        token = _principal.set(principal)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._manager.handle_request(scope, receive, tracked)
        except RuntimeError as exc:
            # At process exit the loop may finalise the SDK's manager before this
            # endpoint learns it stopped: answer as any stopping worker does.
            if started:
                raise
            logger.warning("MCP request refused while the session manager is down: %s", exc)
            raise HTTPError(503, "not_ready", "the service is starting or stopping") from None
        finally:
            _principal.reset(token)
