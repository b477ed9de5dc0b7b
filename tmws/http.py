"""Minimal ASGI plumbing shared by the app and its routes: requests, responses, errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

__all__ = [
    "ASGIApp",
    "HTTPError",
    "Receive",
    "Request",
    "Scope",
    "Send",
    "error_body",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_encoder = msgspec.json.Encoder()
_JSON_HEADERS = [(b"content-type", b"application/json")]


class HTTPError(Exception):
    """An error answered as JSON: ``{"error": {"code": ..., "message": ...}}``."""

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


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


def error_body(code: str, message: str) -> bytes:
    return _encoder.encode(ErrorBody(ErrorDetail(code, message)))


async def send_json(send: Send, status: int, body: bytes,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": _JSON_HEADERS + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class Request:
    """What a route needs from the ASGI scope, with the body read under a size limit."""

    __slots__ = ("_receive", "max_body", "path_params", "scope")

    def __init__(self, scope: Scope, receive: Receive, max_body: int) -> None:
        self.scope = scope
        self._receive = receive
        self.max_body = max_body
        self.path_params: dict[str, str] = {}

    async def json_body(self) -> bytes:
        for key, value in self.scope["headers"]:
            if key == b"content-type":
                if value != b"application/json" and value.split(b";")[0].strip().lower() not in (
                        b"application/json", b""):
                    raise HTTPError(415, "unsupported_media_type",
                                    "send the body as application/json "
                                    f"(got {bytes(value).decode('latin-1')})")
            elif key == b"content-length" and value.isdigit() and int(value) > self.max_body:
                raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client_disconnected", "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self) -> HTTPError:
        return HTTPError(413, "body_too_large",
                         f"the request body exceeds {self.max_body} bytes (TMWS_MAX_BODY_BYTES)")
