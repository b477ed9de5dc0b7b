"""Read replicas: memory reads served by streaming standbys of the primary, with
read-your-writes per namespace (TMWS_DATABASE_REPLICA_URLS, TMWS_DATABASE_REPLICA_MAX_LAG).

Consistency. After a namespace's write commits, :meth:`ReplicatedDatabase.wrote` records the
primary's WAL insert position as the namespace's *fence*, both in this process and in the
``replica_fences`` table on the primary, before the write is acknowledged. A read of the
namespace goes to a replica only if that replica has replayed past both fences (its own
namespace's and the one shared memories use), so a write acknowledged by any worker of any
instance is seen by every later read. Checking the shared fence costs one primary-key lookup
on the primary per replica read; the replica still does the read itself.

Health. One task polls every replica (``pg_is_in_recovery()``, ``pg_last_wal_replay_lsn()``)
and the primary (``pg_current_wal_lsn()``) every :data:`POLL_SECONDS`. A replica's lag is
how long ago the primary had written what the replica has replayed — measured on this
process's clock from the primary's positions, so an idle primary does not make a caught-up
replica look stale and no clocks need to agree. A replica that cannot be reached, is not in
recovery (promoted, or the primary by mistake) or lags past the bound is skipped; a read it
fails is run again on the primary. It is used again once a poll finds it well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal

import psycopg

from tmws.config import Settings
from tmws.database._pool import Database, first_line
from tmws.errors import DatabaseError, OverloadedError
from tmws.metrics import DATABASE_READS, DATABASE_REPLICA_LAG, DATABASE_REPLICA_USABLE

__all__ = ["POLL_SECONDS", "SHARED_SCOPE", "LsnHistory", "Replica", "ReplicatedDatabase",
           "format_lsn", "parse_lsn", "service_database"]

logger = logging.getLogger("tmws.database")

# How often replicas and the primary are polled: after a write, the namespace's reads
# return to a replica at most this long after it has replayed the write.
POLL_SECONDS: Final = 0.2
# A poll that takes longer counts as a failure (the replica is skipped until one succeeds).
POLL_TIMEOUT_SECONDS: Final = 1.0
# The fence scope of shared memories, which every namespace reads. '*' is outside the
# namespace alphabet (tmws.inputs), so no namespace can collide with it.
SHARED_SCOPE: Final = "*shared"
# A fence that could not be recorded pins reads to the primary by time alone.
_UNKNOWN_LSN: Final = 1 << 64

ReplicaState = Literal["connecting", "ok", "lagging", "down", "not_standby"]


def parse_lsn(text: str) -> int:
    """A pg_lsn in PostgreSQL's text form (``16/B374D848``) as an integer."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class LsnHistory:
    """The primary's WAL positions over the last ``keep`` seconds (monotonic time, position),
    to tell how far behind a replica is from the position it has replayed."""

    def __init__(self, keep: float) -> None:
        self._keep = keep
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, lsn: int) -> None:
        """``lsn`` was read from the primary by a query sent at ``at``: everything written
        before ``at`` lies at or below it."""
        self._samples.append((at, lsn))
        while self._samples and self._samples[0][0] < at - self._keep:
            self._samples.popleft()

    def lag(self, replayed: int, now: float, since_replay: float | None) -> float:
        """Seconds of the primary's writes the replica has not replayed, as of ``now``:
        ``now`` minus the time of the newest sample it has replayed past. Behind every
        sample (just started, or far behind), the larger of the oldest sample's age and
        ``since_replay`` (how long ago the last transaction it replayed committed);
        infinite if neither is known."""
        for at, lsn in reversed(self._samples):
            if replayed >= lsn:
                return max(0.0, now - at)
        oldest = now - self._samples[0][0] if self._samples else 0.0
        if since_replay is None:
            return math.inf
        return max(oldest, since_replay)


class Replica:
    """One standby: its pool, and what the latest poll found."""

    def __init__(self, index: int, conninfo: str, settings: Settings) -> None:
        # Named by position, never by URL: URLs carry passwords.
        self.name = f"replica{index}"
        self.database = Database(conninfo, settings, role=self.name)
        self.state: ReplicaState = "connecting"
        self.replayed: int | None = None
        self.lag: float = math.inf
        self.polled_at = 0.0  # monotonic time the latest successful poll was answered
        self.reads = 0
        self.failures = 0  # reads it failed (run again on the primary) and failed polls
        self.error: str | None = None

    def usable(self, max_lag: float) -> bool:
        return self.state == "ok" and self.lag <= max_lag and self.database.available

    def covers(self, lsn: int, recorded_at: float) -> bool:
        """Whether this replica has replayed a write whose fence is ``lsn``, recorded (after
        the write committed) at monotonic time ``recorded_at``: by position, or by time —
        as of its latest poll it had replayed everything the primary wrote ``lag`` seconds
        before, which covers a fence recorded earlier still, even one of unknown position."""
        if self.replayed is not None and self.replayed >= lsn:
            return True
        return recorded_at <= self.polled_at - self.lag

    def failed(self, exc: BaseException, *, during: str) -> None:
        self.failures += 1
        self.error = f"{during}: {first_line(exc)}"
        if self.state != "down":
            logger.warning("read replica %s is down (%s); its reads go to the primary",
                           self.name, self.error)
        self.state = "down"
        DATABASE_REPLICA_USABLE.labels(self.name).set(0)

    def stats(self, max_lag: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "usable": self.usable(max_lag),
            "lag_seconds": None if math.isinf(self.lag) else round(self.lag, 3),
            "replayed_lsn": None if self.replayed is None else format_lsn(self.replayed),
            "reads": self.reads,
            "failures": self.failures,
            "error": self.error,
            "pool": self.database.pool_stats(),
        }


class ReplicatedDatabase(Database):
    """The primary's pool, plus read replicas that serve :meth:`read` when they can."""

    def __init__(self, conninfo: str, settings: Settings, *, role: str = "service") -> None:
        super().__init__(conninfo, settings, role=role)
        self.max_lag = settings.database_replica_max_lag
        self.replicas = [Replica(index, url, settings)
                         for index, url in enumerate(settings.replica_urls, 1)]
        # Samples as old as the bound and a little more: enough to tell a replica that is
        # within it from one that is not.
        self._history = LsnHistory(self.max_lag + 4 * POLL_SECONDS)
        # This process's fences: scope -> (lsn, monotonic time recorded). Dropped once every
        # replica covers them; they spare the shared-fence lookup while a replica is behind.
        self._fences: dict[str, tuple[int, float]] = {}
        self._primary_reads = 0
        self._replica_reads = 0
        self._next = 0
        self._poller: asyncio.Task[None] | None = None

    async def open(self, *, wait: bool = True) -> None:
        await super().open(wait=wait)
        try:
            for replica in self.replicas:
                await replica.database.open(wait=False)
            await self.poll()  # states known before the first read
        except BaseException:
            await self.close()
            raise
        self._poller = asyncio.create_task(self._poll_forever(), name="tmws-replica-poll")

    async def close(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        for replica in self.replicas:
            await replica.database.close()
        await super().close()

    # -- routing --------------------------------------------------------------------------

    async def read(self, namespace: str, query: Any,
                   params: Sequence[Any] | dict[str, Any] = (), *,
                   prepare: bool | None = None) -> list[dict[str, Any]]:
        scopes = (namespace, SHARED_SCOPE)
        candidates = [replica for replica in self.replicas
                      if replica.usable(self.max_lag) and self._covers_local(replica, scopes)]
        if candidates:
            fence = await self._shared_fence(scopes)
            candidates = [replica for replica in candidates
                          if replica.replayed is not None and replica.replayed >= fence]
        for replica in self._rotate(candidates):
            try:
                rows = await replica.database.fetch(query, params, prepare=prepare)
            except OverloadedError:
                continue  # its pool is busy: the primary may have a connection free
            except (DatabaseError, psycopg.errors.SerializationFailure,
                    psycopg.errors.DeadlockDetected, psycopg.OperationalError) as exc:
                # Down, or a query cancelled by a conflict with replay: the primary answers
                # instead (InvalidRequestError, the caller's input, is raised as it is).
                replica.failed(exc, during="read")
                continue
            replica.reads += 1
            self._replica_reads += 1
            DATABASE_READS.labels("replica").inc()
            return rows
        rows = await self.fetch(query, params, prepare=prepare)
        self._primary_reads += 1
        DATABASE_READS.labels("primary").inc()
        return rows

    def _covers_local(self, replica: Replica, scopes: Iterable[str]) -> bool:
        for scope in scopes:
            fence = self._fences.get(scope)
            if fence is not None and not replica.covers(*fence):
                return False
        return True

    def _rotate(self, replicas: list[Replica]) -> list[Replica]:
        """The usable replicas, starting from the next in turn (reads spread over them)."""
        if len(replicas) < 2:
            return replicas
        self._next = (self._next + 1) % len(replicas)
        return replicas[self._next:] + replicas[:self._next]

    async def _shared_fence(self, scopes: Sequence[str]) -> int:
        """The highest fence any worker recorded for these scopes (0: none)."""
        rows = await self.fetch(
            "SELECT max(lsn)::text AS lsn FROM replica_fences WHERE scope = ANY(%s)",
            (list(scopes),), prepare=True)
        text = rows[0]["lsn"] if rows else None
        return 0 if text is None else parse_lsn(text)

    async def wrote(self, namespace: str, *, shared: bool = False) -> None:
        scopes = sorted({namespace, SHARED_SCOPE} if shared else {namespace})  # lock order
        try:
            # Read in a statement after the write's commit, so at or past its commit record;
            # this statement's own WAL follows, so a replica always gets that far.
            rows = await self.fetch(
                "INSERT INTO replica_fences (scope, lsn)"
                " SELECT scope, pg_current_wal_insert_lsn() FROM unnest(%s::text[]) AS scope"
                " ON CONFLICT (scope) DO UPDATE"
                " SET lsn = greatest(replica_fences.lsn, excluded.lsn)"
                " RETURNING lsn::text AS lsn", (scopes,), prepare=True)
            lsn = max((parse_lsn(row["lsn"]) for row in rows), default=_UNKNOWN_LSN)
        except (DatabaseError, OverloadedError, psycopg.Error) as exc:
            # The write is committed and is acknowledged. Other workers cannot learn of it;
            # this one keeps the namespace's reads on the primary until any usable replica
            # is surely past it (the bound on their lag).
            logger.warning("could not record the read-your-writes fence of a write (%s): "
                           "other workers may read it from a replica up to "
                           "TMWS_DATABASE_REPLICA_MAX_LAG late", first_line(exc))
            lsn = _UNKNOWN_LSN
        recorded = time.monotonic()
        for scope in scopes:
            held = self._fences.get(scope)
            # Concurrent writes may return out of order: keep the highest.
            self._fences[scope] = (lsn if held is None else max(lsn, held[0]), recorded)

    # -- polling --------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll()
            except Exception:  # never let the poller die: replicas would stay as they were
                logger.exception("read replica poll failed")
            await asyncio.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - started)))

    async def poll(self) -> None:
        """Sample the primary's WAL position, then every replica's state."""
        sent = time.monotonic()
        try:
            async with asyncio.timeout(POLL_TIMEOUT_SECONDS), self.connection() as conn:
                cursor = await conn.execute("SELECT pg_current_wal_lsn()::text AS lsn")
                row = await cursor.fetchone()
            if row is not None:
                self._history.add(sent, parse_lsn(row["lsn"]))
        except (DatabaseError, OverloadedError, TimeoutError, psycopg.Error):
            pass  # no sample: replicas' lag grows as the history ages, which is the truth
        await asyncio.gather(*(self._poll_replica(replica) for replica in self.replicas))
        self._forget_covered_fences()

    async def _poll_replica(self, replica: Replica) -> None:
        try:
            async with (asyncio.timeout(POLL_TIMEOUT_SECONDS),
                        replica.database.connection() as conn):
                cursor = await conn.execute(
                    "SELECT pg_is_in_recovery() AS standby,"
                    " pg_last_wal_replay_lsn()::text AS replayed,"
                    " extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
                    "::float8 AS since_replay")
                row = await cursor.fetchone()
        except (DatabaseError, OverloadedError, TimeoutError, psycopg.Error) as exc:
            replica.failed(exc, during="poll")
            DATABASE_REPLICA_LAG.labels(replica.name).set(math.nan)
            return
        answered = time.monotonic()
        if row is None or not row["standby"] or row["replayed"] is None:
            if replica.state != "not_standby":
                logger.warning("read replica %s is not a standby (pg_is_in_recovery() is "
                               "false): skipped", replica.name)
            replica.state, replica.error = "not_standby", "not in recovery"
            replica.replayed, replica.lag = None, math.inf
        else:
            replica.replayed = parse_lsn(row["replayed"])
            replica.lag = self._history.lag(replica.replayed, answered, row["since_replay"])
            replica.polled_at = answered
            state: ReplicaState = "ok" if replica.lag <= self.max_lag else "lagging"
            if state != replica.state:
                log = logger.info if state == "ok" else logger.warning
                log("read replica %s is %s (lag %.3f s, bound %g s)", replica.name,
                    "serving reads" if state == "ok" else "lagging: skipped",
                    replica.lag, self.max_lag)
            replica.state = state
            replica.error = None
        DATABASE_REPLICA_LAG.labels(replica.name).set(replica.lag)
        DATABASE_REPLICA_USABLE.labels(replica.name).set(int(replica.usable(self.max_lag)))

    def _forget_covered_fences(self) -> None:
        """Keeps the local fences few. A fence of known position is also in
        ``replica_fences`` (local ones only spare a lookup), so it goes once every working
        replica covers it; one of unknown position only once every replica does."""
        if not self._fences:
            return
        working = [replica for replica in self.replicas if replica.state == "ok"]
        self._fences = {
            scope: fence for scope, fence in self._fences.items()
            if not all(replica.covers(*fence)
                       for replica in (self.replicas if fence[0] == _UNKNOWN_LSN else working))
            or not working}

    # -- reporting ------------------------------------------------------------------------

    def pool_stats(self) -> dict[str, Any]:
        stats = super().pool_stats()
        stats["reads"] = {"primary": self._primary_reads, "replica": self._replica_reads}
        stats["replica_max_lag_seconds"] = self.max_lag
        stats["replicas"] = [replica.stats(self.max_lag) for replica in self.replicas]
        return stats


def service_database(conninfo: str, settings: Settings, *, role: str = "service") -> Database:
    """The service's database: with TMWS_DATABASE_REPLICA_URLS, one whose memory reads
    replicas may serve; otherwise the primary alone."""
    if settings.replica_urls:
        return ReplicatedDatabase(conninfo, settings, role=role)
    return Database(conninfo, settings, role=role)
