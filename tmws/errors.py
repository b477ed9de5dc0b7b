"""The exceptions tmws raises, and the codes of failed executions.

Every error derives from one root, so callers can catch ``TmwsError`` alone::

    TmwsError
     ├── ConfigError                 a TMWS_* variable is missing or invalid
     ├── PatternError                a pattern or pattern file is unusable
     │    ├── PatternCompileError    the Rust core rejected a trigger regex
     │    ├── PatternConfigError     a pattern file is malformed (names file, pattern, problem)
     │    ├── PatternExistsError     registering a name the set already has (409)
     │    └── PatternNotFoundError   removing a name the set does not have (404)
     ├── AuthError                   a request is not authenticated or not allowed
     │    ├── AuthenticationError    missing, malformed, tampered or expired token (401)
     │    └── PermissionDeniedError  the token lacks the scope or namespace (403)
     ├── DatabaseError               PostgreSQL is unreachable or misconfigured
     │    └── ExtensionMissingError  the server lacks the pgvector extension
     ├── OverloadedError             refused at once: it could not finish in time (503)
     ├── InvalidRequestError         a query, its options or a memory are malformed (422)
     ├── HandlerCapabilityError      a handler used what it did not declare
     ├── HealthCheckFailed           the health pattern found a dependency down
     ├── EmbeddingError              an embedding provider failed or answered nonsense
     ├── RedisUnavailable            Redis was not asked (circuit open, unset) or failed
     └── BackupError                 a backup or restore cannot be made

A failed execution is not an exception: ``engine.execute`` answers an ``ExecutionResult`` with
``success=False`` and an :class:`ErrorCode`, which carries the HTTP status it is served with.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = [
    "AuthError",
    "AuthenticationError",
    "BackupError",
    "ConfigError",
    "DatabaseError",
    "EmbeddingError",
    "ErrorCode",
    "ExtensionMissingError",
    "HandlerCapabilityError",
    "HealthCheckFailed",
    "InvalidRequestError",
    "OverloadedError",
    "PatternCompileError",
    "PatternConfigError",
    "PatternError",
    "PatternExistsError",
    "PatternNotFoundError",
    "PermissionDeniedError",
    "RedisUnavailable",
    "TmwsError",
]


class TmwsError(Exception):
    """Root of every error raised by tmws."""


class ConfigError(TmwsError):
    """A configuration variable is invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class PatternError(TmwsError):
    """A pattern definition cannot be used."""


class PatternConfigError(PatternError):
    """A pattern file or definition is malformed."""

    def __init__(self, problem: str, *, source: str | None = None,
                 pattern: str | None = None) -> None:
        where = []
        if source is not None:
            where.append(f"file {source}")
        if pattern is not None:
            where.append(f"pattern {pattern!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{problem}")
        self.source = source
        self.pattern = pattern
        self.problem = problem


class PatternCompileError(PatternError):
    """A trigger regex was rejected by the Rust core (syntax, look-around, back-reference,
    size, duplicate name). ``tmws._native`` raises it for the core's private error."""

    def __init__(self, pattern_name: str, reason: str) -> None:
        super().__init__(pattern_name, reason)  # args: pickles and compares like the core's
        self.pattern_name = pattern_name
        self.reason = reason

    def __str__(self) -> str:
        return f"pattern {self.pattern_name!r}: {self.reason}"


class PatternExistsError(PatternError):
    """A pattern of this name is registered already (and replacing was not asked for)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a pattern named {name!r} is already registered; send "
                         "\"replace\": true to replace it")
        self.name = name


class PatternNotFoundError(PatternError):
    """No pattern of this name is registered."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no pattern named {name!r}; GET /api/v1/patterns lists them")
        self.name = name


class AuthError(TmwsError):
    """A request cannot be served for the caller; ``code`` is the stable API error code."""

    status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AuthenticationError(AuthError):
    """No usable token: missing, malformed, tampered, wrong algorithm or expired (401)."""


class PermissionDeniedError(AuthError):
    """A valid token that may not do this: missing scope or another namespace (403)."""

    status = 403


class DatabaseError(TmwsError):
    """PostgreSQL could not be reached or is not set up as tmws needs. ``retry_after``:
    whole seconds until it is worth trying again (at least 1)."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExtensionMissingError(DatabaseError):
    """The PostgreSQL server does not have the pgvector extension available."""


class InvalidRequestError(TmwsError):
    """The query, its options or a memory are malformed (empty, oversize, unknown mode)."""


class HandlerCapabilityError(TmwsError):
    """A handler reached for memories, statistics or the database without declaring it
    (tmws.handlers.Capabilities): a bug in the handler, reported as its failure."""


class OverloadedError(TmwsError):
    """Refused before anything ran: the database is too busy for this request to finish
    within its time budget. ``retry_after`` is a hint in whole seconds (at least 1)."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HealthCheckFailed(TmwsError):
    """The health pattern ran and found a dependency down (a result, not a crash)."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


class EmbeddingError(TmwsError):
    """An embedding provider failed or answered something unusable."""


class RedisUnavailable(TmwsError):
    """Redis was not asked (circuit open, not configured) or failed (see ``__cause__``)."""


class BackupError(TmwsError):
    """A backup or restore that cannot be made, with what to do about it."""


class ErrorCode(StrEnum):
    """Why an execution failed (``ExecutionResult.error_code``), stable for clients.

    ``status`` is the HTTP status ``POST /api/v1/execute`` answers it with: 200 where the
    execution ran and this is its answer, 4xx/5xx where the service or a dependency failed.
    """

    status: int

    def __new__(cls, code: str, status: int) -> ErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        return member

    NO_PATTERN_MATCHED = "no_pattern_matched", 200
    HANDLER_UNBOUND = "handler_unbound", 200
    HANDLER_FORBIDDEN = "handler_forbidden", 200
    HEALTH_CHECK_FAILED = "health_check_failed", 200
    HANDLER_ERROR = "handler_error", 200
    INVALID_REQUEST = "invalid_request", 422
    OVERLOADED = "overloaded", 503
    DATABASE_UNAVAILABLE = "database_unavailable", 503
    PATTERN_TIMEOUT = "pattern_timeout", 504
