"""Per-request values visible to everything a request calls (logs, audit records)."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, Final

__all__ = ["RequestIds", "request_id"]

# Set by the HTTP app for the duration of one request; None outside requests.
request_id: Final[ContextVar[str | None]] = ContextVar("tmws_request_id", default=None)

_HEADER: Final = b"x-request-id"
# Ids from clients land in logs and the database: accept only short, plain tokens.
_ACCEPTABLE: Final = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    """The id of each request: the client's ``X-Request-ID`` when it is a plain token,
    else a random per-process prefix and a counter — unique, and without the system call
    (which also releases the GIL) a random id per request costs (bench/README.md)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def identify(self, scope: MutableMapping[str, Any]) -> bytes:
        for key, value in scope["headers"]:
            if key == _HEADER:
                if _ACCEPTABLE.fullmatch(value):
                    return bytes(value)
                break
        return f"{self._prefix}-{next(self._counter):x}".encode()
