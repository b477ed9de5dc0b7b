"""Baseline for the HTTP benchmark: a bare Granian ASGI endpoint doing the same msgspec work
as ``POST /api/v1/execute`` on a cache hit (decode the request struct, encode a result of the
same shape), and nothing else.

The response body is read from the file named by BARE_ASGI_RESULT (written by http_load.py
from a real tmws response), so both servers encode the same payload.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from tmws.http.asgi import Receive, Scope, Send
from tmws.http.schemas import ExecuteRequest

_decoder = msgspec.json.Decoder(ExecuteRequest)
_encoder = msgspec.json.Encoder()
_result: Any = msgspec.json.decode(open(os.environ["BARE_ASGI_RESULT"], "rb").read())  # noqa: SIM115
_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    request = _decoder.decode(body)
    payload = dict(_result, pattern_name=_result["pattern_name"] if request.query else None)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _encoder.encode(payload)})
