"""The derived recall index (TMWS_RECALL_INDEX=memory) on a real PostgreSQL: what one
worker writes, another's index ranks at its very next recall; private memories never
cross namespaces; SQL answers until the index is ready and while it reloads; bulk imports,
deletes and TRUNCATE reach it; and the ranking is not worse than the one it replaces."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import psycopg

from tests.conftest import make_settings
from tests.test_memory_relevance import assert_not_worse_than_legacy
from tmws._native import RecallIndex
from tmws._recall_index import DerivedRecallIndex
from tmws.database import Database, import_memories
from tmws.embeddings import HashProvider
from tmws.engine import create_pattern_execution_engine
from tmws.memory import MemoryStore


@asynccontextmanager
async def worker(url: str, *, start: bool = True) -> AsyncIterator[MemoryStore]:
    """One worker's view: its own pool, provider and derived index."""
    settings = make_settings(url)
    database = Database(url, settings)
    await database.open()
    index = DerivedRecallIndex(database, settings.embedding_dim)
    store = MemoryStore(database, HashProvider(settings.embedding_dim), recall_index=index)
    try:
        if start:
            index.start()
            assert await index.wait_ready(30)
        yield store
    finally:
        await index.close()
        await database.close()


def index_of(store: MemoryStore) -> DerivedRecallIndex:
    assert store.recall_index is not None
    return store.recall_index


def word() -> str:
    return "zq" + uuid.uuid4().hex[:10]


async def test_another_workers_write_is_ranked_at_the_next_recall(
        migrated_database: str) -> None:
    async with worker(migrated_database) as writer, worker(migrated_database) as reader:
        served_before = index_of(reader).stats()["searches"]
        for round_ in range(12):
            marker = word()
            memory_id = await writer.store("team", f"the {marker} rotation runbook {round_}",
                                           visibility="shared" if round_ % 3 == 0 else "private")
            found = await reader.search("team", f"recall {marker}")
            assert found and found[0].id == memory_id, (round_, found)
            assert await writer.delete("team", memory_id)
            assert all(m.id != memory_id for m in await reader.search("team", marker))
        stats = index_of(reader).stats()
        assert stats["searches"] - served_before == 24 and not stats["fallbacks"], stats


async def test_private_memories_never_cross_namespaces(migrated_database: str) -> None:
    async with worker(migrated_database) as store:
        marker = word()
        private = await store.store("alpha", f"{marker} private deploy key")
        shared = await store.store("alpha", f"{marker} shared deploy notes",
                                   visibility="shared")
        own = {m.id for m in await store.search("alpha", marker)}
        other = {m.id for m in await store.search("beta", marker)}
        assert own == {private, shared}
        assert other == {shared}
        # Vector-only recall (no word in common) from another namespace: still no leak.
        assert private not in {m.id for m in await store.search("beta", "private deploy key")}
        assert index_of(store).stats()["searches"] == 3


async def test_sql_answers_until_the_index_is_ready(migrated_database: str) -> None:
    async with worker(migrated_database, start=False) as store:
        marker = word()
        memory_id = await store.store("ns", f"{marker} before the index")
        found = await store.search("ns", marker)
        assert [m.id for m in found] == [memory_id]
        assert index_of(store).stats()["fallbacks"] == {"not_ready": 1}
        index_of(store).start()
        assert await index_of(store).wait_ready(30)
        assert [m.id for m in await store.search("ns", marker)] == [memory_id]
        assert index_of(store).stats()["searches"] == 1


async def test_bulk_imports_and_truncate_reach_the_index(migrated_database: str) -> None:
    async with worker(migrated_database) as store:
        marker = word()
        lines = [json.dumps({"content": f"{marker} imported note {i}", "namespace": "bulk"})
                 for i in range(300)]
        report = await import_memories(store.database, store.provider, lines)
        assert report.written == 300
        found = await store.search("bulk", marker, limit=50)
        assert len(found) == 50 and all(marker in m.content for m in found)
        assert index_of(store).stats()["documents"] == 300

        with psycopg.connect(migrated_database, autocommit=True) as conn:
            conn.execute("TRUNCATE memories")
        assert await store.search("bulk", marker) == []  # SQL, while the index reloads
        assert await index_of(store).wait_ready(30)
        after = await store.store("bulk", f"{marker} after the truncate")
        assert [m.id for m in await store.search("bulk", marker)] == [after]
        stats = index_of(store).stats()
        assert stats["loads"] == 2 and stats["documents"] == 1, stats


async def test_the_engine_serves_recall_from_the_index(migrated_database: str) -> None:
    settings = make_settings(migrated_database, recall_index="memory")
    async with await create_pattern_execution_engine(settings) as engine:
        index = index_of(engine.memory)
        assert await index.wait_ready(30)
        marker = word()
        await engine.memory.store("eng", f"{marker} incident retro")
        result = await engine.execute(f"recall memories about {marker}", "balanced",
                                      {"namespace": "eng"})
        assert result.success, result
        assert marker in msgspec.json.encode(result.result).decode()
        assert index.stats()["searches"] >= 1


async def test_ranking_is_not_worse_than_the_legacy_one(migrated_database: str) -> None:
    """The hand-written set of tests/test_memory_relevance.py, ranked by the index."""
    async with worker(migrated_database) as store:
        await assert_not_worse_than_legacy(store, "facts")
        assert not index_of(store).stats()["fallbacks"]


class _FailingSearches:
    """The native index with searches that fail, as a bug in it would."""

    def __init__(self, index: RecallIndex) -> None:
        self._index = index
        self.failures = 1

    def search(self, *args: Any, **kwargs: Any) -> list[tuple[int, float]]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the recall index was left inconsistent by a panic")
        return self._index.search(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


async def test_a_failing_index_reloads_and_sql_answers_meanwhile(
        migrated_database: str) -> None:
    async with worker(migrated_database) as store:
        index = index_of(store)
        marker = word()
        memory_id = await store.store("ns", f"{marker} survives")
        index.index = _FailingSearches(index.index)  # type: ignore[assignment]
        assert [m.id for m in await store.search("ns", marker)] == [memory_id]
        assert index.stats()["fallbacks"] == {"index_failed": 1}
        assert await index.wait_ready(30)
        assert [m.id for m in await store.search("ns", marker)] == [memory_id]
        stats = index.stats()
        assert stats["loads"] == 2 and stats["searches"] == 1, stats


class _SlowCompaction:
    """The native index with a compaction that lasts until released, as a large
    partition's rebuild lasts about a minute."""

    def __init__(self, index: RecallIndex) -> None:
        self._index = index
        self.started = threading.Event()
        self.release = threading.Event()

    def compact(self) -> int:
        self.started.set()
        self.release.wait(30)
        return self._index.compact()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


async def test_deletes_compact_the_index_while_sql_answers(migrated_database: str) -> None:
    async with worker(migrated_database) as store:
        index = index_of(store)
        namespace, marker = f"thin-{word()}", word()
        ids = [await store.store(namespace, f"{marker} note {i}") for i in range(100)]
        assert len(await store.search(namespace, marker, limit=100)) == 100
        slow = _SlowCompaction(index.index)
        index.index = slow  # type: ignore[assignment]
        with psycopg.connect(migrated_database, autocommit=True) as conn:
            conn.execute("DELETE FROM memories WHERE id = ANY(%s)", (ids[10:],))
        # The next poll applies the deletes, finds the partition thinned out and rebuilds
        # it; recall meanwhile is SQL, and right.
        assert await asyncio.to_thread(slow.started.wait, 30)
        assert not index.ready
        found = await store.search(namespace, marker, limit=100)
        assert sorted(m.id for m in found) == ids[:10]
        assert index.stats()["fallbacks"] == {"compacting": 1}
        slow.release.set()
        assert await index.wait_ready(30)
        found = await store.search(namespace, marker, limit=100)
        assert sorted(m.id for m in found) == ids[:10]
        stats = index.stats()
        assert stats["compactions"] == 1 and stats["fallbacks"] == {"compacting": 1}, stats
        assert (stats["removed_vectors"], stats["dead_postings"]) == (0, 0), stats
        assert not index.index.compaction_due()
