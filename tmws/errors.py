"""The exceptions tmws raises.

Every error derives from one root, so callers can catch ``TmwsError`` alone::

    TmwsError
     ├── ConfigError                 a TMWS_* variable is missing or invalid
     ├── PatternError                a pattern or pattern file is unusable
     │    ├── PatternCompileError    the Rust core rejected a trigger regex (native type)
     │    └── PatternConfigError     a pattern file is malformed (names file, pattern, problem)
     ├── AuthError                   a request is not authenticated or not allowed
     │    ├── AuthenticationError    missing, malformed, tampered or expired token (401)
     │    └── PermissionDeniedError  the token lacks the scope or namespace (403)
     ├── DatabaseError               PostgreSQL is unreachable or misconfigured
     │    └── ExtensionMissingError  the server lacks the pgvector extension
     └── ExecutionError              a query could not be executed
          ├── NoPatternMatchedError  nothing in the library fits the query
          ├── PatternTimeoutError    a handler ran past its per-type timeout
          ├── InvalidRequestError    the query or its options are malformed
          └── HandlerCapabilityError a handler used what it did not declare

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
    "PatternCompileError",
    "PatternConfigError",
    "PatternError",
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
    """PostgreSQL could not be reached or is not set up as tmws needs."""


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


# Imported last: the native module subclasses PatternError defined above.
from tmws._native import PatternCompileError  # noqa: E402
