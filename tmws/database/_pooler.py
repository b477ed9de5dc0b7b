"""What a transaction-mode pooler in front of PostgreSQL changes (TMWS_DATABASE_POOL_MODE).

PgBouncer with ``pool_mode = transaction`` lends a server connection to a client for one
transaction and then to any other client. Nothing tied to a *session* survives from one
statement to the next, so with ``TMWS_DATABASE_POOL_MODE=transaction``:

- no prepared statements: psycopg names them ``_pg3_0``, ``_pg3_1``… per client connection,
  so on a shared server connection another client's ``_pg3_0`` already exists, or ours is
  missing (PgBouncer tracks them only from 1.21 on, with ``max_prepared_statements``);
- no session ``SET``: PgBouncer refuses the ``options`` startup parameter that carries
  TMWS_DB_STATEMENT_TIMEOUT, and a plain ``SET`` (the vector search knobs) would land on
  whichever server connection ran it and leak into other clients' queries. Every statement
  of the pool instead runs in a transaction of its own that starts with them as
  ``SET LOCAL`` (:func:`transaction_prologue`), sent with ``BEGIN`` in one round trip;
- what must hold a session (an advisory lock across transactions, ``LISTEN``, a concurrent
  index build) connects to TMWS_DATABASE_DIRECT_URL, which bypasses the pooler
  (:func:`session_conninfo`), or is refused naming it. Migrations need no session: in this
  mode they run in one transaction under a transaction-level advisory lock.

Whether a pooler is there cannot be told reliably from the client side (PgBouncer answers
as the server does), so the operator says so.
"""

from __future__ import annotations

from typing import Any

from tmws.config import Settings
from tmws.database._vectors import search_settings_sql
from tmws.errors import DatabaseError

__all__ = ["connect_options", "session_conninfo", "transaction_pooled",
           "transaction_prologue"]

def transaction_pooled(settings: Settings) -> bool:
    """True when TMWS_DATABASE_URL leads to a transaction-mode pooler."""
    return settings.database_pool_mode == "transaction"


def connect_options(settings: Settings) -> dict[str, Any]:
    """psycopg connection arguments for a connection through TMWS_DATABASE_URL: with a
    transaction pooler, no prepared statements (psycopg prepares a statement on its fifth
    run by default; without a threshold it ignores ``prepare=True`` too)."""
    return {"prepare_threshold": None} if transaction_pooled(settings) else {}


def session_conninfo(conninfo: str, settings: Settings, purpose: str) -> str:
    """Where work that needs its own session (``purpose``, for the error) connects:
    TMWS_DATABASE_DIRECT_URL if set, else ``conninfo`` — unless that is a transaction
    pooler, which cannot keep a session: then DatabaseError naming the variable."""
    if settings.database_direct_url is not None:
        return settings.database_direct_url
    if transaction_pooled(settings):
        raise DatabaseError(
            f"{purpose} needs a database session of its own (it holds an advisory lock "
            "across transactions), which a transaction-mode pooler cannot keep "
            "(TMWS_DATABASE_POOL_MODE=transaction): set TMWS_DATABASE_DIRECT_URL to a "
            "connection string that reaches PostgreSQL directly, bypassing the pooler")
    return conninfo


def transaction_prologue(settings: Settings, pgvector: tuple[int, ...] | None) -> str:
    """``BEGIN`` and the session settings of a pooled connection as ``SET LOCAL``: one
    simple-protocol string (no parameters, so several statements in one round trip)."""
    statements = ["BEGIN"]
    if settings.db_statement_timeout:  # 0: the server's own, as in session mode
        statements.append(
            f"SET LOCAL statement_timeout = {int(settings.db_statement_timeout)}")
    statements.append(search_settings_sql(settings, pgvector, local=True))
    return "; ".join(statements)
