"""Per-request values visible to everything a request calls (logs, audit records)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final

__all__ = ["request_id"]

# Set by the HTTP app for the duration of one request; None outside requests.
request_id: Final[ContextVar[str | None]] = ContextVar("tmws_request_id", default=None)
