"""The connection pool: ``psycopg_pool.AsyncConnectionPool`` sized by the TMWS_DB_* settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import msgspec
import psycopg
from pgvector.psycopg import register_vector_async
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tmws.config import Settings
from tmws.database._pooler import (
    connect_options,
    session_conninfo,
    transaction_pooled,
    transaction_prologue,
)
from tmws.database._vectors import parse_version, search_settings_sql
from tmws.errors import (
    DatabaseError,
    HandlerCapabilityError,
    InvalidRequestError,
    OverloadedError,
)
from tmws.metrics import DATABASE_CONNECTIONS_ACTIVE, DATABASE_QUERY_DURATION

__all__ = ["APPLICATION_PREFIX", "UNREADABLE_KEY", "Budget", "Database", "database_fence",
           "first_line", "get_pool_stats", "load_json", "request_budget"]

logger = logging.getLogger("tmws.database")
# application_name of every pooled connection: tmws/<pid>/<role>.
APPLICATION_PREFIX = "tmws/"
sql_logger = logging.getLogger("tmws.database.sql")

# A connection returned to the pool this recently skips the pre-ping round trip.
PRE_PING_BYPASS_SECONDS = 0.5
# How long routing avoids a database that could not be reached before trying it again.
RETRY_AFTER_SECONDS = 5.0

_open_databases: weakref.WeakSet[Database] = weakref.WeakSet()

# Set (to the reason) while code runs that must never reach PostgreSQL, such as a handler
# in fast mode: any connection it asks for is refused, whatever the handler declared.
database_fence: ContextVar[str | None] = ContextVar("tmws_database_fence", default=None)


class Budget:
    """The time a request has (``deadline``, on ``time.monotonic``), shared by everything
    it awaits: tasks it starts copy the context, so they see this same object. ``starved``
    is set when a wait for a connection ended without one (timed out, or cancelled by the
    request's own timeout), so a timeout can tell "the database was busy or down" from "the
    handler was slow"."""

    __slots__ = ("deadline", "starved")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.starved = False


# Set around work done for a request: connection requests wait at most until its deadline.
request_budget: ContextVar[Budget | None] = ContextVar("tmws_request_budget", default=None)


def get_pool_stats() -> dict[str, Any]:
    """Pool statistics of every open database in this process (the diagnosis call of
    deploy/README.md, Troubleshooting).

    In a process with no pool of its own (an operator's fresh ``python3 -c``), the
    running service's connections instead: ``pg_stat_activity`` of the configured database
    (TMWS_DATABASE_URL, or the embedded server if it is running) grouped by
    ``application_name`` (``tmws/<worker pid>/<role>``) and state; see
    :func:`tmws.database.service_connections`.
    """
    pools = [db.pool_stats() for db in list(_open_databases)]
    if not pools:
        from tmws.database._activity import service_connections

        return service_connections()
    if len(pools) == 1:
        return pools[0]
    return {"pools": pools}


class Database:
    """A pool of connections to one PostgreSQL database."""

    def __init__(self, conninfo: str, settings: Settings, *, role: str = "service") -> None:
        """``role`` names the pool in ``pg_stat_activity``: every connection's
        ``application_name`` is ``tmws/<pid>/<role>``, so another process
        (``get_pool_stats()`` in a shell, an operator's psql) can tell whose connections are
        whose."""
        self.conninfo = conninfo
        self.application_name = f"{APPLICATION_PREFIX}{os.getpid()}/{role}"
        self._settings = settings
        self._pgvector: tuple[int, ...] | None = None
        self._echo = settings.db_echo
        self._errors = 0
        self._unreachable_since: float | None = None
        self._returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary())
        self._queries = 0
        self._query_seconds = 0.0
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row,
                                  "application_name": self.application_name,
                                  **connect_options(settings)}
        # Behind a transaction pooler the session settings go with every statement instead
        # (_fetch_in_transaction): the pooler refuses `options` and shares server sessions.
        self._pooled = transaction_pooled(settings)
        self._prologue: str | None = None
        if settings.db_statement_timeout and not self._pooled:
            kwargs["options"] = f"-c statement_timeout={settings.db_statement_timeout}"
        self._pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo,
            min_size=settings.db_pool_min,
            max_size=settings.db_max_connections + settings.db_overflow,
            timeout=settings.db_pool_timeout,
            max_lifetime=settings.db_pool_recycle,
            max_idle=min(600.0, settings.db_pool_recycle),
            check=self._pre_ping if settings.db_pool_pre_ping else None,
            kwargs=kwargs,
            connection_class=_tracked_connection_class(self),
            configure=self._configure,
            open=False,
            name="tmws",
        )

    async def _pre_ping(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """TMWS_DB_POOL_PRE_PING: test a connection before lending it — unless it was in use
        moments ago. A round trip per checkout costs as much as a fast query; a connection
        that worked half a second ago almost surely still does, and if the server died in
        between, the query fails and the outage handling takes over (HikariCP's
        aliveBypassWindowMs makes the same trade)."""
        if conn.closed or conn.broken:
            raise psycopg.OperationalError("connection is closed")
        returned = self._returned_at.get(conn)
        if returned is not None and time.monotonic() - returned < PRE_PING_BYPASS_SECONDS:
            return
        await AsyncConnectionPool.check_connection(conn)

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Every connection speaks pgvector (binary vectors) and has the kNN knobs set.
        set_json_loads(load_json, conn)
        await register_vector_async(conn)
        if self._pgvector is None:  # asked once: which knobs exist depends on it
            cursor = await conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            row = await cursor.fetchone()
            self._pgvector = parse_version(row["extversion"] if row else None) or ()
        if self._pooled:
            self._prologue = transaction_prologue(self._settings, self._pgvector or None)
            return  # a SET here would stay on a server connection other clients share
        await conn.execute(search_settings_sql(self._settings, self._pgvector or None))

    async def open(self, *, wait: bool = True) -> None:
        """Open the pool. ``wait=False`` (a read replica) connects in the background and
        leaves the pool out of :func:`get_pool_stats`, which its owner reports instead: a
        replica that is down must not stop start-up."""
        if not wait:
            await self._pool.open(wait=False)
            return
        try:
            await self._pool.open(wait=True, timeout=self._settings.db_pool_timeout)
        except PoolTimeout as exc:
            await self._pool.close()
            raise DatabaseError(
                f"could not open {self._settings.db_max_connections} connection(s) to PostgreSQL "
                f"within {self._settings.db_pool_timeout:g}s (TMWS_DB_POOL_TIMEOUT): "
                "is the server running and TMWS_DATABASE_URL right?") from exc
        _open_databases.add(self)

    async def close(self) -> None:
        _open_databases.discard(self)
        await self._pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection. Within a request (:data:`request_budget`) the wait for one
        ends at the request's deadline, never TMWS_DB_POOL_TIMEOUT later."""
        fenced = database_fence.get()
        if fenced is not None:
            raise HandlerCapabilityError(f"the database is out of bounds here ({fenced})")
        if not self.available:
            # Fail fast instead of queueing behind a pool that cannot connect.
            raise self.unreachable()
        budget = request_budget.get()
        timeout = self._settings.db_pool_timeout
        if budget is not None:
            timeout = min(timeout, budget.deadline - time.monotonic())
            if timeout <= 0:
                budget.starved = True
                raise self._no_connection(budget)
        waiting = True
        try:
            async with self._pool.connection(timeout=timeout) as conn:
                waiting = False
                DATABASE_CONNECTIONS_ACTIVE.inc()
                try:
                    yield conn
                finally:
                    DATABASE_CONNECTIONS_ACTIVE.dec()
                    self._returned_at[conn] = time.monotonic()
        except PoolTimeout as exc:
            self._errors += 1
            raise self._no_connection(budget) from exc
        finally:
            if waiting and budget is not None:
                budget.starved = True  # timed out or cancelled while queued for the pool

    def unreachable(self) -> DatabaseError:
        return DatabaseError(
            f"database unavailable: the server could not be reached (retrying every "
            f"{RETRY_AFTER_SECONDS:g}s)", retry_after=self.retry_after())

    def _no_connection(self, budget: Budget | None) -> DatabaseError | OverloadedError:
        """No connection came in time: the server is down, or (within a request's budget)
        the pool is busy, or (outside one) exhausted for TMWS_DB_POOL_TIMEOUT."""
        if not self.available:
            return self.unreachable()
        if budget is not None:
            return OverloadedError(
                "overloaded: no database connection came free within the request's time "
                "budget (TMWS_DB_MAX_CONNECTIONS); retry shortly", retry_after=1)
        return DatabaseError(
            f"no database connection within {self._settings.db_pool_timeout:g}s "
            "(TMWS_DB_POOL_TIMEOUT): the pool is exhausted or the server is down")

    def retry_after(self) -> int:
        """Whole seconds until the next attempt to reach an unreachable server (at least 1)."""
        since = self._unreachable_since
        if since is None:
            return 1
        return max(1, math.ceil(RETRY_AFTER_SECONDS - (time.monotonic() - since)))

    async def fetch(self, query: Any, params: Sequence[Any] | dict[str, Any] = (), *,
                    prepare: bool | None = None) -> list[dict[str, Any]]:
        """Run one parameterised statement; returns its rows (empty for none).

        ``prepare=True`` prepares the statement on first use per connection (hot queries);
        behind a transaction pooler nothing is prepared.
        """
        if self._echo:
            sql_logger.info("SQL %s", query if isinstance(query, str) else repr(query),
                            extra={"params_count": len(params)})
        started = time.perf_counter()
        try:
            rows: list[dict[str, Any]]
            async with self.connection() as conn:
                if self._pooled:
                    rows = await self._fetch_in_transaction(conn, query, params)
                else:
                    cursor = await conn.execute(query, params, prepare=prepare)
                    rows = await cursor.fetchall() if cursor.description else []
        except psycopg.errors.QueryCanceled as exc:
            self._errors += 1
            raise DatabaseError("statement timed out (TMWS_DB_STATEMENT_TIMEOUT)") from exc
        except psycopg.OperationalError as exc:
            # One broken connection is not an outage: only failed connection attempts
            # (see _tracked_connection_class) mark the server unreachable.
            self._errors += 1
            raise DatabaseError(f"database unavailable: {first_line(exc)}") from exc
        except psycopg.DataError as exc:
            # A value PostgreSQL cannot take (SQLSTATE class 22: a NUL character, a number
            # or a date out of range): the caller's input, answered as such, not a 500.
            raise InvalidRequestError(f"the database refused a value: {first_line(exc)}"
                                      ) from exc
        else:
            self._unreachable_since = None
        finally:
            elapsed = time.perf_counter() - started
            self._queries += 1
            self._query_seconds += elapsed
            DATABASE_QUERY_DURATION.observe(elapsed)
        return rows

    async def _fetch_in_transaction(self, conn: psycopg.AsyncConnection[Any], query: Any,
                                    params: Sequence[Any] | dict[str, Any]
                                    ) -> list[dict[str, Any]]:
        """Behind a transaction pooler: the statement in a transaction of its own, opened
        with the session settings as SET LOCAL (one round trip with BEGIN), so they apply
        to it and to nothing else on the shared server connection. Three round trips
        instead of one (deploy/README.md, PgBouncer)."""
        prologue = self._prologue or transaction_prologue(self._settings,
                                                          self._pgvector or None)
        await conn.execute(prologue)
        try:
            cursor = await conn.execute(query, params, prepare=False)
            rows: list[dict[str, Any]] = await cursor.fetchall() if cursor.description else []
            await conn.execute("COMMIT")
        except psycopg.Error:
            if not conn.closed and conn.info.transaction_status in (
                    psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR):
                # Else the pool rolls back, with a warning; if this fails too, the
                # statement's own error says more (and the pool discards the connection).
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK")
            raise
        return rows

    @property
    def connect_options(self) -> dict[str, Any]:
        """psycopg arguments for a connection of one's own to :attr:`conninfo` (the audit
        writer's, the pattern-sync listener's): behind a transaction pooler, no prepared
        statements."""
        return connect_options(self._settings)

    @property
    def session_conninfo(self) -> str | None:
        """Where to open a connection that keeps its session (LISTEN, locks held across
        transactions): TMWS_DATABASE_DIRECT_URL, else :attr:`conninfo` unless it leads to a
        transaction pooler (then None)."""
        try:
            return session_conninfo(self.conninfo, self._settings, "a session")
        except DatabaseError:
            return None

    @asynccontextmanager
    async def session(self, purpose: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection whose session lasts the block (advisory locks across transactions):
        a pooled one, or behind a transaction pooler one of its own to
        TMWS_DATABASE_DIRECT_URL; DatabaseError naming that variable without it.
        ``purpose`` names the work in that error."""
        target = session_conninfo(self.conninfo, self._settings, purpose)
        if target == self.conninfo:
            async with self.connection() as pooled:
                yield pooled
            return
        try:
            conn = await psycopg.AsyncConnection.connect(
                target, autocommit=True, row_factory=dict_row,
                application_name=self.application_name)
        except psycopg.OperationalError as exc:
            raise DatabaseError("cannot connect to TMWS_DATABASE_DIRECT_URL: "
                                f"{first_line(exc)}") from None
        async with conn:
            set_json_loads(load_json, conn)
            await register_vector_async(conn)
            yield conn

    async def read(self, namespace: str, query: Any,
                   params: Sequence[Any] | dict[str, Any] = (), *,
                   prepare: bool | None = None) -> list[dict[str, Any]]:
        """A read-only statement over what ``namespace`` may read. Here the primary runs it;
        with read replicas (:mod:`tmws.database._replicas`) a replica that has replayed
        every write of the namespace may."""
        return await self.fetch(query, params, prepare=prepare)

    async def wrote(self, namespace: str, *, shared: bool = False) -> None:
        """Called once a write of ``namespace`` (of a shared memory: ``shared``) has
        committed, before it is acknowledged; with read replicas, the namespace's reads then
        wait for a replica to replay it."""

    @property
    def available(self) -> bool:
        """False for a while after the server could not be reached, so routing can steer
        around it; afterwards the next query tries again (and clears it if it succeeds)."""
        since = self._unreachable_since
        return since is None or time.monotonic() - since > RETRY_AFTER_SECONDS

    def _mark_unreachable(self) -> None:
        if self.available:  # first failure, or the retry after the window failed too
            self._unreachable_since = time.monotonic()

    def _mark_reachable(self) -> None:
        self._unreachable_since = None

    async def ping(self, timeout: float | None = None) -> bool:
        """True if a round trip succeeds (within ``timeout`` seconds, if given)."""
        try:
            async with asyncio.timeout(timeout):
                rows = await self.fetch("SELECT 1 AS ok")
        except (DatabaseError, TimeoutError):
            return False
        return bool(rows and rows[0]["ok"] == 1)

    def pool_stats(self) -> dict[str, Any]:
        raw = self._pool.get_stats()
        size = raw.get("pool_size", 0)
        idle = raw.get("pool_available", 0)
        return {
            "name": self._pool.name,
            "size": size,
            "in_use": size - idle,
            "idle": idle,
            "waiting": raw.get("requests_waiting", 0),
            "min_size": self._pool.min_size,
            "max_size": self._pool.max_size,
            "errors": self._errors + raw.get("connections_errors", 0)
                      + raw.get("requests_errors", 0),
            "queries": self._queries,
            "avg_query_ms": round(1000 * self._query_seconds / self._queries, 3)
                            if self._queries else 0.0,
        }


def _tracked_connection_class(database: Database) -> type[psycopg.AsyncConnection[Any]]:
    """A connection class that tells ``database`` whether the server accepts connections,
    including the pool's own background reconnection attempts."""

    class TrackedConnection(psycopg.AsyncConnection[Any]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> TrackedConnection:
            try:
                conn = await super().connect(*args, **kwargs)
            except psycopg.OperationalError:
                database._mark_unreachable()
                raise
            database._mark_reachable()
            return conn

    return TrackedConnection


_json_decoder = msgspec.json.Decoder()
UNREADABLE_KEY = "tmws_unreadable"


def load_json(data: bytes | str) -> Any:
    """json/jsonb values as Python objects, for every pooled connection. Never raises:
    a value too deep for a recursive decoder (written before tmws bounded nesting) comes
    back as ``{"tmws_unreadable": why}``, so one row cannot fail every read that sees it."""
    try:
        return _json_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        return {UNREADABLE_KEY: f"stored JSON could not be decoded ({type(exc).__name__}); "
                                "rewrite or delete this row"}


def first_line(exc: BaseException) -> str:
    """The first line of an error message (driver messages run to several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
