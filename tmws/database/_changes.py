"""The memory change feed: what a derived recall index needs to rebuild itself from
PostgreSQL and then to stay current with every committed write, whoever made it.

The triggers of migration 0007 record, in ``memory_changes``, the id of every memory any
statement inserts, updates or deletes (COPY and an operator's psql included) with the id of
the writing transaction (xid8). A :class:`ChangeFeed` (one per derived index) reads it:

- :meth:`ChangeFeed.load` streams every memory from one snapshot and keeps that snapshot;
- :meth:`ChangeFeed.catch_up`, one statement, returns the memories whose change rows its own
  snapshot sees and the previous one did not, as they are now (or that they are gone), and
  keeps the new snapshot.

Why snapshots and not "changes after the last seq": seq values are taken at insert but
become visible at commit, in another order: a transaction holding seq 101 may commit after
the one holding 102, and a reader resuming after 102 would skip 101 forever. A snapshot
``xmin:xmax:xip`` says exactly which transactions it saw: every xid below xmin had finished,
and of those from xmin up to xmax, all but the in-progress ones listed in xip. So the change
rows a feed has not applied yet are exactly those with ``xid >= xmax`` or ``xid`` in xip of
its previous snapshot: two index probes, each change delivered once, and the feed's state is
one snapshot, whose size depends on how many transactions were running, not on how many
changes a long transaction held back. (``xmin`` is :attr:`ChangeFeed.horizon`: every change
below it is applied.) An aborted transaction's rows are never visible, so never delivered.

A catch-up whose statement starts after a write was acknowledged sees it: call
:meth:`ChangeFeed.catch_up` when a query starts, and apply its result before the next
catch-up's (they are serialised per feed; a later one may hold a newer state of a memory).

Old change rows are deleted by :meth:`ChangeFeed.prune`. A feed that has not caught up for
half its retention window is :attr:`~ChangeFeed.behind`: changes it never saw may be gone,
and :meth:`~ChangeFeed.catch_up` answers ``reload=True`` until :meth:`~ChangeFeed.load` runs
again. So does a TRUNCATE (of ``memories`` or of the log), recorded as memory id -1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Final

import msgspec
from psycopg.rows import tuple_row

if TYPE_CHECKING:
    from tmws.database._pool import Database

__all__ = ["DEFAULT_RETENTION", "TRUNCATED", "CatchUp", "ChangeFeed", "ChangeLogPruner",
           "MemoryRow"]

logger = logging.getLogger(__name__)

# Seconds a change-log row is kept (TMWS_RECALL_INDEX_LOG_RETENTION's default).
DEFAULT_RETENTION: Final = 3600.0

# The memory id a TRUNCATE records: everything changed.
TRUNCATED: Final = -1

# What the index needs of one memory, in MemoryRow's field order. importance as float8: the
# same Python float from load() (binary results) as from catch_up() (text).
_ROW: Final = ("m.id, m.namespace, m.visibility = 'shared', m.importance::float8,"
               " (extract(epoch FROM m.created_at) * 1000000)::int8,"
               " m.content_tsv::text, vector_send(m.embedding)")

# One header row (the statement's own snapshot, the query's lexemes), then one row per
# memory changed by a transaction that ``since`` did not see (migration 0007's
# tmws_memory_changes_since, which reads in this statement's snapshot): ``changed`` is the
# id from the change log, ``id`` NULL when the memory is gone. A NULL ``since`` (not loaded)
# finds nothing.
_CATCH_UP: Final = f"""
SELECT pg_current_snapshot()::text AS snapshot,
       to_tsvector('english', %(query)s::text)::text AS query_tsv,
       NULL::bigint AS changed, NULL::bigint AS id, NULL::text AS namespace,
       NULL::boolean AS shared, NULL::float8 AS importance, NULL::int8 AS created_us,
       NULL::text AS tsv, NULL::bytea AS embedding
UNION ALL
SELECT NULL, NULL, ch.memory_id, {_ROW}
  FROM tmws_memory_changes_since(%(since)s::pg_snapshot) AS ch (memory_id)
  LEFT JOIN memories m ON m.id = ch.memory_id"""

_LOAD: Final = f"SELECT {_ROW} FROM memories m"

# Deletes the rows of transactions that had finished before a snapshot taken at least the
# retention ago (``below``: its xmin), if their changed_at is as old: every feed that is not
# behind has caught up since that snapshot, so has them. changed_at alone would not do: it
# is the insert time, and a transaction longer than the window commits rows that old.
_PRUNE: Final = """
WITH gone AS (
    DELETE FROM memory_changes
     WHERE xid < %(below)s::xid8
       AND changed_at < now() - make_interval(secs => %(retention)s)
    RETURNING 1)
SELECT (SELECT count(*) FROM gone) AS removed,
       pg_snapshot_xmin(pg_current_snapshot())::text AS xmin"""

_LOAD_CURSOR: Final = "tmws_memory_load"


class MemoryRow(msgspec.Struct, frozen=True):
    """What the derived index needs of one memory."""

    id: int
    namespace: str
    shared: bool  # visibility = 'shared'
    importance: float
    created_us: int  # created_at, microseconds since the Unix epoch
    # content_tsv::text, e.g. "'auth':1,4 'token':2 'ns agent-1':5 'vis private':6"
    tsv: str
    # vector_send(embedding): int16 dim, int16 unused, dim big-endian float4; None if NULL
    embedding: bytes | None


class CatchUp(msgspec.Struct, frozen=True):
    """What changed since the previous catch-up (or load) of a feed."""

    rows: list[MemoryRow]  # changed memories as they are now: upsert these
    deleted: list[int]  # changed memories that no longer exist: remove these
    # A TRUNCATE was seen, or the feed is behind or not loaded: rebuild from load(). Rows and
    # deleted are empty then, and every catch-up says so until load() has run.
    reload: bool
    # to_tsvector('english', query_text)::text, read in the same statement; None without one
    query_tsv: str | None


class ChangeFeed:
    """One derived index's view of the memory change log (see the module docstring).

    Not shared between indexes: each keeps its own snapshot. ``retention`` (seconds) is how
    long change rows are kept by :meth:`prune`; a feed that has not caught up for half of it
    must reload.
    """

    def __init__(self, database: Database, *, retention: float = DEFAULT_RETENTION) -> None:
        if not retention > 0:
            raise ValueError("retention must be positive")
        self._database = database
        self._retention = float(retention)
        self._lock = asyncio.Lock()
        # The snapshot ("xmin:xmax:xip,...") of the last load or catch-up; None until load()
        # has run, and again once a reload is due.
        self._snapshot: str | None = None
        self._last_caught_up: float | None = None
        self._loads = 0  # bumped by every load(): a load overtaken by another keeps nothing
        # (time.monotonic() after a statement, its snapshot's xmin), one every sixteenth of
        # the retention at most: what prune() may delete below.
        self._finished: deque[tuple[float, int]] = deque()

    @property
    def horizon(self) -> int | None:
        """The xmin of the feed's snapshot: every change of a transaction below it is
        applied. None when not loaded."""
        return None if self._snapshot is None else _xmin(self._snapshot)

    @property
    def last_caught_up(self) -> float | None:
        """``time.monotonic()`` when the last successful catch-up (or load) was sent."""
        return self._last_caught_up

    @property
    def behind(self) -> bool:
        """True if never loaded, a reload is due, or the last catch-up is older than half
        the retention (pruning may have removed changes this feed never saw)."""
        if self._snapshot is None or self._last_caught_up is None:
            return True
        return time.monotonic() - self._last_caught_up > self._retention / 2

    async def load(self, batch_rows: int = 5000) -> AsyncGenerator[list[MemoryRow], None]:
        """Every memory, in batches of ``batch_rows``, from one consistent snapshot (a
        REPEATABLE READ READ ONLY transaction, a server-side cursor) on one connection.

        Until the last batch has been taken the feed is not loaded (:meth:`catch_up`
        answers ``reload=True``); afterwards catch-ups continue from exactly the snapshot's
        end. Take every batch, or close the generator (``contextlib.aclosing``): it holds a
        pooled connection, and its transaction's snapshot holds back vacuum, until then.
        All of it, the caller's work on the batches included, must take less than half the
        retention, or the feed is behind as soon as it is loaded.
        """
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        async with self._lock:  # after any catch-up in flight, so it cannot overwrite this
            self._loads += 1
            load = self._loads
            self._snapshot = None
            self._last_caught_up = None
        async with self._database.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            started = time.monotonic()
            cursor = await conn.execute("SELECT pg_current_snapshot()::text AS snapshot")
            first: dict[str, Any] | None = await cursor.fetchone()
            assert first is not None
            snapshot: str = first["snapshot"]
            taken = time.monotonic()
            async with conn.cursor(_LOAD_CURSOR, row_factory=tuple_row,
                                   binary=True) as rows:
                await rows.execute(_LOAD)
                while batch := await rows.fetchmany(batch_rows):
                    yield [MemoryRow(*row) for row in batch]
        async with self._lock:
            if load == self._loads:
                self._snapshot = snapshot
                self._last_caught_up = started
                self._finished_by(taken, _xmin(snapshot))

    async def catch_up(self, query_text: str | None = None) -> CatchUp:
        """The memories changed since the last catch-up (or load), read in one statement on
        the primary that starts after this call; with ``query_text``, its lexemes from the
        same statement. Serialised per feed: apply each result before the next."""
        async with self._lock:
            started = time.monotonic()
            since = None if self.behind else self._snapshot
            if since is None:
                self._snapshot = None  # behind: reload, however soon the next catch-up
            rows = await self._database.fetch(_CATCH_UP, {"since": since,
                                                          "query": query_text}, prepare=True)
            taken = time.monotonic()
            header = next(row for row in rows if row["snapshot"] is not None)
            changed = [row for row in rows if row["snapshot"] is None]
            if since is None or any(row["changed"] == TRUNCATED for row in changed):
                self._snapshot = None
                return CatchUp([], [], reload=True, query_tsv=header["query_tsv"])
            snapshot: str = header["snapshot"]
            self._snapshot = snapshot
            self._last_caught_up = started
            self._finished_by(taken, _xmin(snapshot))
            return CatchUp(
                rows=[MemoryRow(row["id"], row["namespace"], row["shared"], row["importance"],
                                row["created_us"], row["tsv"], row["embedding"])
                      for row in changed if row["id"] is not None],
                deleted=[row["changed"] for row in changed if row["id"] is None],
                reload=False, query_tsv=header["query_tsv"])

    async def prune(self) -> int:
        """Delete change rows older than the retention; returns how many went.

        Only rows of transactions that had finished before a snapshot this feed took at
        least the retention ago go (so nothing, for a feed younger than that), and only if
        their ``changed_at`` is as old: a feed that is not :attr:`behind` has caught up
        since, whichever process prunes.
        """
        now = time.monotonic()
        below = None
        for at, xmin in self._finished:
            if now - at >= self._retention:
                below = xmin
        rows = await self._database.fetch(_PRUNE, {
            "below": None if below is None else str(below), "retention": self._retention})
        self._finished_by(time.monotonic(), int(rows[0]["xmin"]))
        return int(rows[0]["removed"])

    def _finished_by(self, at: float, xmin: int) -> None:
        """Notes that every transaction below ``xmin`` had finished by ``at``."""
        finished = self._finished
        if len(finished) > 1 and finished[-1][0] - finished[-2][0] < self._retention / 16:
            finished[-1] = (at, xmin)  # entries a sixteenth apart, the newest always kept
        else:
            finished.append((at, xmin))
        # Only the newest entry older than the retention is ever needed.
        while len(self._finished) > 1 and at - self._finished[1][0] >= self._retention:
            self._finished.popleft()


class ChangeLogPruner:
    """Keeps ``memory_changes`` bounded in a process without a derived index (which prunes
    as it reads): the triggers log every write whoever reads the log, so someone must
    delete old rows. One statement every ``every`` seconds; the first rows go after
    ``retention`` (see :meth:`ChangeFeed.prune`)."""

    def __init__(self, database: Database, *, retention: float = DEFAULT_RETENTION,
                 every: float = 60.0) -> None:
        self._feed = ChangeFeed(database, retention=retention)
        self._every = every
        self._task: asyncio.Task[None] | None = None
        self.pruned = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                 name="tmws-change-log-prune")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def prune(self) -> int:
        removed = await self._feed.prune()
        self.pruned += removed
        return removed

    async def _run(self) -> None:
        while True:
            try:
                await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down: the next round tries again
                logger.warning("memory change log: prune failed: %s", exc)
            await asyncio.sleep(self._every)


def _xmin(snapshot: str) -> int:
    return int(snapshot.split(":", 1)[0])
