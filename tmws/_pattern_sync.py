"""Pattern-set changes shared through PostgreSQL: every instance of a group runs one set.

Instances (each worker of each server) that share a database and a
``TMWS_PATTERN_SYNC_GROUP`` share their pattern set. It lives in the ``pattern_sets``
table as numbered versions of the whole set:

- A change (register, unregister, reload) runs in one transaction holding the group's
  advisory lock: it reads the newest version, applies the change to *that* (never to this
  worker's copy, which may be behind), checks and compiles the result, and inserts it as
  the next version. Only then is it installed here and acknowledged, so concurrent changes
  on different workers serialise and none is lost.
- Every instance ``LISTEN``\\ s for new versions and also polls once per
  :data:`HEARTBEAT` (a notification can be missed while reconnecting, and is never
  delivered through PgBouncer in transaction mode); it installs any newer version and
  records the version it runs in ``pattern_instances``, with the time (its heartbeat).
- A change then waits, up to ``TMWS_PATTERN_SYNC_TIMEOUT``, until every live instance of
  the group (heartbeat within :data:`LIVE_WINDOW`) runs it, and says whether they all do.
- At start, an instance whose pattern file is the one the newest version descends from
  adopts that version (runtime changes survive restarts); one with a different file
  publishes it as a new version, as a reload would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import psycopg

from tmws.database import Database
from tmws.database._pool import first_line
from tmws.errors import DatabaseError, PatternConfigError, TmwsError
from tmws.models import PatternDefinition
from tmws.registry import PatternRegistry, PreparedSet, fingerprint_of

__all__ = ["CHANNEL", "HEARTBEAT", "LIVE_WINDOW", "PatternSets", "Propagation", "StoredSet"]

logger = logging.getLogger("tmws.sync")

CHANNEL: Final = "tmws_patterns"
HEARTBEAT: Final = 1.0  # seconds between polls and heartbeats
LIVE_WINDOW: Final = 5.0  # an instance silent for longer is not waited for
KEEP_VERSIONS: Final = 100  # older versions are deleted (the newest is all that runs)
_RETRY: Final = (0.2, 0.5, 1.0, 2.0, 5.0)  # reconnection backoff, seconds

_set_decoder = msgspec.json.Decoder(list[PatternDefinition])
_set_encoder = msgspec.json.Encoder()


class StoredSet(msgspec.Struct, frozen=True):
    """The newest version of a group's set, as read under its lock."""

    version: int
    base: str
    patterns: list[PatternDefinition]


class Propagation(msgspec.Struct, frozen=True):
    """Where a change has arrived when the call returns."""

    version: int
    fingerprint: str
    instances: int  # live instances of the group (this one included)
    applied: int  # of those, how many run this version or a newer one
    visible_everywhere: bool
    waited_ms: float


# change(current) -> (the new set, or None for "nothing to store", base of the new set)
Mutation = Callable[[StoredSet], tuple[Sequence[PatternDefinition], str]]


def _lock_key(group: str) -> int:
    # A stable 31-bit key per group for pg_advisory_xact_lock (hashtext is not stable
    # across major versions).
    return zlib.crc32(f"tmws:patterns:{group}".encode()) & 0x7FFFFFFF


class PatternSets:
    """One instance's part in a group: changes, start-up, and following the others.

    ``check`` refuses a set this instance cannot run (the engine's handler rules); the
    registry compiles it (in a thread) and installs it (on the event loop).
    """

    def __init__(self, database: Database, registry: PatternRegistry, group: str, *,
                 timeout: float,
                 check: Callable[[Sequence[PatternDefinition]], None]) -> None:
        self._database = database
        self._registry = registry
        self.group = group
        self._timeout = timeout
        self._check = check
        self.instance = uuid.uuid4().hex
        self._lock = _lock_key(group)
        self._listener: asyncio.Task[None] | None = None
        self._follow = asyncio.Lock()  # one install at a time, in version order
        self._failed_version: int | None = None
        self.changes = self.applied = self.errors = 0
        self.diverged: str | None = None  # why the newest version does not run here
        self._outage = False

    # -- start and stop ---------------------------------------------------------------------

    async def start(self, *, actor: str) -> None:
        """The registry holds this instance's pattern file: adopt the group's newest version
        if it descends from the same file, else publish the file as a new version; then
        follow the group."""
        file_patterns = self._registry.patterns()
        file_base = self._registry.fingerprint

        async def adopt_or_publish(conn: psycopg.AsyncConnection[Any],
                                   newest: StoredSet | None) -> tuple[int, PreparedSet | None]:
            if newest is not None and newest.base == file_base:
                if newest.patterns == file_patterns:
                    return newest.version, None
                try:
                    prepared = await asyncio.to_thread(self._prepare, newest.patterns)
                except TmwsError as exc:
                    self._diverge(newest.version, exc)
                    return newest.version, None
                return newest.version, prepared
            version = (newest.version if newest is not None else 0) + 1
            await self._insert(conn, version, file_patterns, file_base, "start", actor, None)
            logger.info("pattern group %r: this instance's pattern file is now version %d "
                        "(%d patterns)", self.group, version, len(file_patterns))
            return version, None

        version, prepared = await self._locked(adopt_or_publish)
        if prepared is not None:
            self._registry.install(prepared, shared_version=version)
        elif self.diverged is None:
            self._registry.shared_version = version  # the file set already installed
        await self._heartbeat_now()
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(), name="tmws-pattern-sync")

    def _prepare(self, patterns: Sequence[PatternDefinition]) -> PreparedSet:
        self._check(patterns)
        return self._registry.prepare(patterns)

    def _version(self) -> int | None:
        return self._registry.shared_version

    def _fingerprint(self) -> str:
        return self._registry.fingerprint

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        with contextlib.suppress(Exception):  # best effort: it ages out of the window anyway
            async with asyncio.timeout(1.0):
                await self._database.fetch(
                    "DELETE FROM pattern_instances WHERE instance = %s", (self.instance,))

    # -- changes ----------------------------------------------------------------------------

    async def change(self, mutation: Mutation, *, action: str, actor: str,
                     target: str | None) -> tuple[PreparedSet, Propagation]:
        """Apply ``mutation`` to the newest version, store the result as the next one,
        install it here and wait for the group. ``mutation`` raises to refuse (nothing is
        stored); compile errors refuse too."""
        async def apply(conn: psycopg.AsyncConnection[Any], newest: StoredSet | None
                        ) -> tuple[int, PreparedSet]:
            current = newest or StoredSet(0, self._fingerprint(), [])
            patterns, base = mutation(current)
            prepared = await asyncio.to_thread(self._prepare, patterns)
            version = current.version + 1
            await self._insert(conn, version, list(prepared.patterns.values()), base, action,
                               actor, target)
            return version, prepared

        async with self._follow:  # not interleaved with installing another version here
            version, prepared = await self._locked(apply)
            self._registry.install(prepared, shared_version=version)
            self.diverged = None
        self.changes += 1
        await self._heartbeat_now()
        return prepared, await self._await_everywhere(version, prepared.fingerprint)

    async def _locked(self, work: Callable[[psycopg.AsyncConnection[Any], StoredSet | None],
                                           Any]) -> Any:
        """Run ``work(conn, newest)`` in a transaction holding the group's lock."""
        try:
            async with self._database.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock,))
                return await work(conn, await self._newest(conn))
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"database unavailable: {first_line(exc)}") from exc
        except psycopg.DataError as exc:  # a value only the server checks: nothing stored
            raise PatternConfigError(f"the database refused the pattern set: "
                                     f"{first_line(exc)}") from exc

    async def _newest(self, conn: psycopg.AsyncConnection[Any]) -> StoredSet | None:
        cursor = await conn.execute(
            "SELECT version, base, patterns::text AS patterns FROM pattern_sets"
            " WHERE grp = %s ORDER BY version DESC LIMIT 1", (self.group,))
        row = await cursor.fetchone()
        if row is None:
            return None
        version, base, patterns = _row(row, "version", "base", "patterns")
        return StoredSet(int(version), str(base), _set_decoder.decode(patterns))

    async def _insert(self, conn: psycopg.AsyncConnection[Any], version: int,
                      patterns: Sequence[PatternDefinition], base: str, action: str,
                      actor: str, target: str | None) -> None:
        await conn.execute(
            "INSERT INTO pattern_sets (grp, version, fingerprint, base, patterns, action,"
            " actor, target) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s)",
            (self.group, version, fingerprint_of(patterns), base,
             _set_encoder.encode(list(patterns)).decode(), action, actor, target))
        await conn.execute("DELETE FROM pattern_sets WHERE grp = %s AND version <= %s",
                           (self.group, version - KEEP_VERSIONS))
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.group))

    # -- following the group ----------------------------------------------------------------

    async def _listen(self) -> None:
        # LISTEN needs a session: behind a transaction pooler, on TMWS_DATABASE_DIRECT_URL
        # if set, else no LISTEN at all (the pooler would drop the registration with the
        # server connection) and the poll alone, up to one HEARTBEAT later.
        session = self._database.session_conninfo
        if session is not None:
            conninfo, options = session, {}
        else:
            conninfo, options = self._database.conninfo, self._database.connect_options
        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=5, **options)
                async with conn:
                    if session is not None:
                        await conn.execute(f"LISTEN {CHANNEL}")
                    attempt = 0
                    while True:
                        await self._follow_newest(conn)
                        await self._heartbeat(conn)
                        if self._outage:
                            self._outage = False
                            logger.info("pattern sync: following group %r again", self.group)
                        # A notification (any group: cheap to check) or the next beat.
                        async for _ in conn.notifies(timeout=HEARTBEAT, stop_after=1):
                            pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost, server down: retry with backoff
                self.errors += 1
                if not self._outage:
                    self._outage = True
                    logger.warning("pattern sync: cannot follow group %r (%s); retrying",
                                   self.group, first_line(exc))
                await asyncio.sleep(_RETRY[min(attempt, len(_RETRY) - 1)])
                attempt += 1

    async def _follow_newest(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cursor = await conn.execute(
            "SELECT max(version) AS version FROM pattern_sets WHERE grp = %s", (self.group,))
        row = await cursor.fetchone()
        newest = None if row is None else _row(row, "version")[0]
        local = self._version()
        if newest is None or (local is not None and newest <= local) \
                or newest == self._failed_version:
            return
        async with self._follow:
            local = self._version()
            if local is not None and newest <= local:  # a change here got there first
                return
            stored = await self._newest(conn)
            if stored is None:
                return
            try:
                prepared = await asyncio.to_thread(self._prepare, stored.patterns)
            except TmwsError as exc:
                self._diverge(stored.version, exc)
                return
            self._registry.install(prepared, shared_version=stored.version)
            self.diverged = None
            self._failed_version = None
            self.applied += 1
            logger.info("pattern group %r: installed version %d (%d patterns)", self.group,
                        stored.version, len(stored.patterns))

    def _diverge(self, version: int, exc: TmwsError) -> None:
        self._failed_version = version
        self.errors += 1
        self.diverged = f"version {version} does not load here: {exc}"
        logger.error("pattern group %r: %s; this instance keeps its current set",
                     self.group, self.diverged)

    async def _heartbeat(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(
            "INSERT INTO pattern_instances (instance, grp, version, fingerprint, seen_at)"
            " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (instance) DO UPDATE SET"
            " version = excluded.version, fingerprint = excluded.fingerprint,"
            " seen_at = excluded.seen_at",
            (self.instance, self.group, self._version() or 0, self._fingerprint()))

    async def _heartbeat_now(self) -> None:
        with contextlib.suppress(DatabaseError):  # the listener beats again within a second
            async with self._database.connection() as conn:
                await self._heartbeat(conn)

    async def _await_everywhere(self, version: int, fingerprint: str) -> Propagation:
        started = time.monotonic()
        deadline = started + self._timeout
        while True:
            try:
                rows = await self._database.fetch(
                    "SELECT count(*) AS live, count(*) FILTER (WHERE version >= %s) AS applied"
                    " FROM pattern_instances WHERE grp = %s"
                    " AND seen_at > now() - make_interval(secs => %s)",
                    (version, self.group, LIVE_WINDOW))
                live, applied = int(rows[0]["live"]), int(rows[0]["applied"])
            except DatabaseError:
                live, applied = 0, -1  # unknown: the change is stored all the same
            now = time.monotonic()
            everywhere = applied >= live > 0
            if everywhere or now >= deadline:
                return Propagation(version, fingerprint, live, max(applied, 0), everywhere,
                                   round((now - started) * 1000, 1))
            await asyncio.sleep(0.02)

    def stats(self) -> dict[str, Any]:
        return {"mechanism": "database", "group": self.group, "instance": self.instance,
                "version": self._version(), "changes": self.changes, "applied": self.applied,
                "errors": self.errors, "diverged": self.diverged,
                "following": self._listener is not None and not self._outage}


def _row(row: Any, *names: str) -> tuple[Any, ...]:
    """Columns by name from a dict row (pool connections) or by position (plain ones)."""
    if isinstance(row, dict):
        return tuple(row[name] for name in names)
    return tuple(row[: len(names)])
