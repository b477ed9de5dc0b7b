"""Minimal ASGI plumbing shared by the app, its guards and its endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qsl

import msgspec

from tmws._native import json_too_deep

__all__ = [
    "PRINCIPAL_KEY",
    "ASGIApp",
    "ErrorBody",
    "ErrorDetail",
    "HTTPError",
    "Message",
    "Receive",
    "Request",
    "Response",
    "Scope",
    "Send",
    "error_body",
    "header",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Where the auth guard leaves the authenticated caller for the endpoints (tmws.auth.Principal).
PRINCIPAL_KEY: Final = "tmws.principal"

_encoder = msgspec.json.Encoder()
_JSON: Final = b"application/json"


class HTTPError(Exception):
    """An error answered as JSON: ``{"error": {"code": ..., "message": ...}}``.

    ``code`` is stable (clients branch on it); ``message`` says what to fix.
    """

    def __init__(self, status: int, code: str, message: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every error response. ``result`` carries the failed execution where there is one."""

    error: ErrorDetail
    result: Any = None


def error_body(code: str, message: str, result: Any = None) -> bytes:
    return _encoder.encode(ErrorBody(ErrorDetail(code, message), result))


class Response(NamedTuple):
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] | None = None
    content_type: bytes = _JSON


async def send_json(send: Send, status: int, body: bytes,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", _JSON), *(headers or ())]})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (``name`` in lower case, as ASGI gives it)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class Request:
    """What an endpoint needs from the ASGI scope, with the body read under a size limit."""

    __slots__ = ("_receive", "max_body", "max_depth", "path_params", "scope")

    def __init__(self, scope: Scope, receive: Receive, max_body: int,
                 path_params: dict[str, str] | None = None, max_depth: int = 32) -> None:
        self.scope = scope
        self._receive = receive
        self.max_body = max_body
        self.max_depth = max_depth
        self.path_params = path_params or {}

    @property
    def principal(self) -> Any:
        """The authenticated caller (``tmws.auth.Principal``), None with auth off."""
        return self.scope.get(PRINCIPAL_KEY)

    def query_params(self) -> dict[str, str]:
        raw: bytes = self.scope.get("query_string", b"")
        return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}

    async def json_body(self) -> bytes:
        """The body, within TMWS_MAX_BODY_BYTES and nested at most TMWS_MAX_JSON_DEPTH
        levels (checked on the bytes, before any decoder recurses into it)."""
        body = await self._read_body()
        offset = json_too_deep(body, self.max_depth)
        if offset is not None:
            raise HTTPError(400, "json_too_deep",
                            f"the body nests deeper than {self.max_depth} levels (at byte "
                            f"{offset}); the limit is TMWS_MAX_JSON_DEPTH")
        return body

    async def _read_body(self) -> bytes:
        for key, value in self.scope["headers"]:
            if key == b"content-type":
                if value != _JSON and value.split(b";")[0].strip().lower() not in (_JSON, b""):
                    raise HTTPError(415, "unsupported_media_type",
                                    "send the body as application/json "
                                    f"(got {bytes(value).decode('latin-1')})")
            elif key == b"content-length" and value.isdigit() and int(value) > self.max_body:
                raise self._too_large()
        message = await self._receive()
        if not message.get("more_body", False) and message["type"] == "http.request":
            body: bytes = message.get("body", b"")  # the usual case: one message
            if len(body) > self.max_body:
                raise self._too_large()
            return body
        chunks: list[bytes] = []
        size = 0
        while True:
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client_disconnected", "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
            message = await self._receive()
        return b"".join(chunks)

    def _too_large(self) -> HTTPError:
        return HTTPError(413, "body_too_large",
                         f"the request body exceeds {self.max_body} bytes (TMWS_MAX_BODY_BYTES)")
