"""How an exception an endpoint let through is answered: status, stable code, message.

Shared by the HTTP API and the MCP tools, so both name a failure alike.
"""

from __future__ import annotations

import logging

from tmws.errors import (
    AuthError,
    DatabaseError,
    InvalidRequestError,
    OverloadedError,
    PatternError,
    TmwsError,
)
from tmws.http.asgi import error_body

__all__ = ["failure"]

logger = logging.getLogger("tmws.http.app")


def failure(exc: Exception, path: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, body and headers for an exception an endpoint let through."""
    if isinstance(exc, AuthError):
        # RFC 6750: say which scheme, and that the token was the problem.
        challenge = [(b"www-authenticate", b'Bearer realm="tmws", error="invalid_token"')]
        return exc.status, error_body(exc.code, str(exc)), challenge if exc.status == 401 else []
    if isinstance(exc, OverloadedError):
        return 503, error_body("overloaded", str(exc)), _retry_after(exc.retry_after)
    if isinstance(exc, DatabaseError):
        logger.warning("database unavailable on %s: %s", path, exc)
        return (503, error_body("database_unavailable", f"{exc}; retry shortly"),
                _retry_after(exc.retry_after))
    if isinstance(exc, InvalidRequestError | PatternError):
        return 422, error_body("invalid_request", str(exc)), []
    if isinstance(exc, TmwsError):
        logger.warning("request failed on %s: %s", path, exc)
        return 503, error_body("unavailable", str(exc)), _retry_after(1)
    logger.exception("unhandled error on %s", path)
    return 500, error_body("internal_error", "internal error; the server log has the details "
                           "under this response's X-Request-ID"), []


def _retry_after(seconds: int) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(max(1, seconds)).encode())]
