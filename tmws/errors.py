"""The exceptions tmws raises.

Every error derives from one root, so callers can catch ``TmwsError`` alone::

    TmwsError
     ├── ConfigError                 a TMWS_* variable is missing or invalid
     ├── PatternError                a pattern or pattern file is unusable
     │    ├── PatternCompileError    the Rust core rejected a trigger regex (native type)
     │    ├── PatternConfigError     a pattern file is malformed (names file, pattern, problem)
     │    ├── PatternExistsError     registering a name the set already has (409)
     │    └── PatternNotFoundError   removing a name the set does not have (404)
     ├── AuthError                   a request is not authenticated or not allowed
     │    ├── AuthenticationError    missing, malformed, tampered or expired token (401)
     │    └── PermissionDeniedError  the token lacks the scope or namespace (403)
     ├── DatabaseError               PostgreSQL is unreachable or misconfigured
     │    └── ExtensionMissingError  the server lacks the pgvector extension
     └── ExecutionError              a query could not be executed
          ├── NoPatternMatchedError  nothing in the library fits the query
          ├── PatternTimeoutError    a handler ran past its per-type timeout
          ├── InvalidRequestError    the query or its options are malformed
          ├── HandlerCapabilityError a handler used what it did not declare
          └── OverloadedError        refused at once: it could not finish in time (503)

``PatternCompileError`` is defined by the native extension (``tmws._tmws_core``) as a
subclass of ``PatternError`` and re-exported here; it carries ``pattern_name`` and
``reason``.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "AuthenticationError",
    "ConfigError",
    "DatabaseError",
    "ExecutionError",
    "ExtensionMissingError",
    "HandlerCapabilityError",
    "InvalidRequestError",
    "NoPatternMatchedError",
    "OverloadedError",
    "PatternCompileError",
    "PatternConfigError",
    "PatternError",
    "PatternExistsError",
    "PatternNotFoundError",
    "PatternTimeoutError",
    "PermissionDeniedError",
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


class ExecutionError(TmwsError):
    """A query could not be executed."""


class NoPatternMatchedError(ExecutionError):
    """No pattern in the library fits the query."""


class PatternTimeoutError(ExecutionError):
    """A pattern handler exceeded its per-type timeout."""


class InvalidRequestError(ExecutionError):
    """The query or its options are malformed (empty, oversize, unknown mode)."""


class HandlerCapabilityError(ExecutionError):
    """A handler reached for memories, statistics or the database without declaring it
    (tmws.handlers.Capabilities): a bug in the handler, reported as its failure."""


class OverloadedError(ExecutionError):
    """Refused before anything ran: the database is too busy for this request to finish
    within its time budget. ``retry_after`` is a hint in whole seconds (at least 1)."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# Imported last: the native module subclasses PatternError defined above.
from tmws._native import PatternCompileError  # noqa: E402
