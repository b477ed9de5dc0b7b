"""The derived recall index: each worker's in-process copy of the memories, for recall.

PostgreSQL stays the source of truth. At start the index loads every memory from one
snapshot (:meth:`ChangeFeed.load`) in the background; until then, and whenever it cannot
vouch for being current, :meth:`DerivedRecallIndex.search` returns None and recall runs as
SQL. Once ready, each search first catches up (:meth:`ChangeFeed.catch_up`: one statement,
started after the search was called, that also parses the query's words), so a memory
written and acknowledged by any worker of any instance before a recall began is in the
ranking it gets. A poll every second keeps idle workers close, so catch-ups stay small.

Deletes and updates leave dead entries behind; once they are a large share of a partition
the poll rebuilds it (:meth:`RecallIndex.compact`) off the event loop, and recall runs as
SQL meanwhile: at a million memories a partition's rebuild takes about a minute (a
``reembed`` replaces every vector), which searches must not wait out.

Ranking (``tmws._tmws_core.RecallIndex``) has the shape of the SQL's: full text (all words,
else any; BM25) and the nearest vectors, fused by reciprocal rank fusion, reading one
partition per namespace and one of shared memories. It returns ids; the rows come from
PostgreSQL, filtered by readability again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, Final

from tmws._native import RecallIndex
from tmws.database import Database
from tmws.database._changes import DEFAULT_RETENTION, CatchUp, ChangeFeed, MemoryRow
from tmws.metrics import RECALL_INDEX_READY, RECALL_INDEX_SEARCHES

__all__ = ["DerivedRecallIndex"]

logger = logging.getLogger(__name__)

_POLL_SECONDS: Final = 1.0
_PRUNE_SECONDS: Final = 60.0
_RETRY_SECONDS: Final = 5.0
# Catch-ups with more rows than this (a bulk import) are applied off the event loop.
_INLINE_ROWS: Final = 200


def _row(row: MemoryRow) -> tuple[int, str, bool, float, int, str, bytes | None]:
    return (row.id, row.namespace, row.shared, row.importance, row.created_us, row.tsv,
            row.embedding)


class DerivedRecallIndex:
    """One worker's derived index over ``database``'s memories (see the module docstring)."""

    def __init__(self, database: Database, dim: int, *, ef_search: int = 100,
                 retention: float = DEFAULT_RETENTION) -> None:
        self.database = database
        self.index = RecallIndex(dim, ef_search=ef_search)
        self.feed = ChangeFeed(database, retention=retention)
        self._ready = False
        self._compacting = False
        self._compactions = 0
        self._task: asyncio.Task[None] | None = None
        self._reload = asyncio.Event()
        # Held to catch up and search, load, or compact: catch-ups are applied in the
        # order they were read (a later one may hold a newer state of the same memory).
        self._applying = asyncio.Lock()
        self._loads = 0
        self._load_seconds: float | None = None
        self._fallbacks: dict[str, int] = {}
        self._searches = 0

    @property
    def ready(self) -> bool:
        return self._ready and not self._compacting and not self.feed.behind

    def start(self) -> None:
        """Load in the background, then keep up until :meth:`close`."""
        if self._task is None:
            RECALL_INDEX_READY.set(0)
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                 name="tmws-recall-index")

    async def wait_ready(self, timeout: float) -> bool:
        """True once loaded (for tests and benchmarks; the service does not wait)."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def close(self) -> None:
        self._ready = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def search(self, namespace: str, words: str, vector: Sequence[float] | None, *,
                     candidates: int, limit: int, max_distance: float, rrf_k: float
                     ) -> list[tuple[int, float]] | None:
        """``(id, score)`` best first, or None when the index cannot answer (not loaded,
        reloading, compacting, or its catch-up failed): the caller ranks in SQL then."""
        if not self.ready:
            self._fell_back("compacting" if self._compacting else "not_ready")
            return None
        # The search runs under the lock too: a compaction or bulk apply queued behind it
        # then cannot hold the index's write lock while this search waits for it.
        async with self._applying:
            if not self.ready:  # it went stale or began a rebuild while this one waited
                self._fell_back("compacting" if self._compacting else "reloading")
                return None
            try:
                caught = await self._catch_up(words)
            except Exception as exc:  # the SQL path reports the database's own errors
                logger.warning("recall index: catch-up failed, ranking in SQL: %s", exc)
                self._fell_back("catch_up_failed")
                return None
            if caught is None:
                self._fell_back("reloading")
                return None
            try:
                ranked = self.index.search(namespace, caught.query_tsv or "", vector,
                                           candidates=candidates, limit=limit,
                                           max_distance=max_distance, rrf_k=rrf_k)
            except Exception as exc:  # a bug, not the caller's input: rebuild, rank in SQL
                logger.error("recall index: search failed, reloading: %s", exc)
                self._must_reload()
                self._fell_back("index_failed")
                return None
        self._searches += 1
        RECALL_INDEX_SEARCHES.labels("index").inc()
        return ranked

    def stats(self) -> dict[str, Any]:
        return {"ready": self.ready, "loads": self._loads,
                "load_seconds": self._load_seconds, "compactions": self._compactions,
                "searches": self._searches,
                "fallbacks": dict(self._fallbacks), **self.index.stats()}

    # -- internals ---------------------------------------------------------------------------

    def _fell_back(self, reason: str) -> None:
        self._fallbacks[reason] = self._fallbacks.get(reason, 0) + 1
        RECALL_INDEX_SEARCHES.labels(reason).inc()

    async def _catch_up(self, words: str | None = None) -> CatchUp | None:
        """Reads and applies the changes since the last catch-up; None when they say to
        reload (the loop then does). The caller holds ``_applying``: catch-ups are applied
        in the order they were read, as a later one may hold a newer state of a memory."""
        caught = await self.feed.catch_up(words)
        if caught.reload:
            self._must_reload()
            return None
        rows = [_row(r) for r in caught.rows]
        try:
            if len(rows) > _INLINE_ROWS:
                await asyncio.to_thread(self.index.apply, rows, list(caught.deleted))
            elif rows or caught.deleted:
                self.index.apply(rows, list(caught.deleted))
        except BaseException:  # the feed has moved past changes the index lacks
            self._must_reload()
            raise
        return caught

    def _must_reload(self) -> None:
        self._ready = False
        RECALL_INDEX_READY.set(0)
        self._reload.set()

    async def _load(self) -> None:
        started = time.perf_counter()
        self._ready = False
        async with self._applying:  # no catch-up between the snapshot and its rows
            self.index.clear()
            async for batch in self.feed.load():  # off the event loop: HNSW inserts take time
                await asyncio.to_thread(self.index.apply, [_row(r) for r in batch], [])
            await asyncio.to_thread(self.index.shrink)
        self._loads += 1
        self._load_seconds = round(time.perf_counter() - started, 3)
        self._ready = True
        RECALL_INDEX_READY.set(1)
        logger.info("recall index: %d memories loaded in %.1f s",
                    len(self.index), self._load_seconds)
        if self.feed.behind:  # it will load again, and again: say why
            logger.error("recall index: loading took %.0f s, more than half of "
                         "TMWS_RECALL_INDEX_LOG_RETENTION: changes it has not read may be "
                         "pruned, so it loads again; raise the retention",
                         self._load_seconds)

    async def _compact(self) -> None:
        """Rebuilds the partitions removals have thinned out; recall runs as SQL until
        it is done (searches already waiting for the lock go first)."""
        self._compacting = True
        RECALL_INDEX_READY.set(0)
        try:
            async with self._applying:
                started = time.perf_counter()
                rebuilt = await asyncio.to_thread(self.index.compact)
            self._compactions += 1
            logger.info("recall index: %d partition(s) compacted in %.1f s", rebuilt,
                        time.perf_counter() - started)
        finally:
            self._compacting = False
            RECALL_INDEX_READY.set(1 if self.ready else 0)

    async def _run(self) -> None:
        last_prune = time.monotonic()
        while True:
            try:
                if not self._ready or self.feed.behind or self._reload.is_set():
                    self._reload.clear()
                    await self._load()
                await asyncio.sleep(_POLL_SECONDS)
                async with self._applying:
                    caught = await self._catch_up()
                RECALL_INDEX_READY.set(1 if self.ready else 0)
                if caught is None:
                    continue
                if await asyncio.to_thread(self.index.compaction_due):
                    await self._compact()
                if time.monotonic() - last_prune > _PRUNE_SECONDS:
                    last_prune = time.monotonic()
                    await self.feed.prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down: recall runs in SQL meanwhile
                logger.warning("recall index: %s; retrying in %.0f s", exc, _RETRY_SECONDS)
                RECALL_INDEX_READY.set(1 if self.ready else 0)
                await asyncio.sleep(_RETRY_SECONDS)

