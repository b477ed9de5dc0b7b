from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import make_settings, scratch_database
from tests.test_cli import run as run_cli
from tmws.config import Settings
from tmws.database import Database, format_reindex_report, maybe_reindex, reindex
from tmws.database._reindex import (
    MAX_LISTS,
    MIN_LISTS,
    OLD_NAME,
    TEMP_NAME,
    IndexState,
    ideal_lists,
    reindex_reason,
    vector_index_state,
)
from tmws.database._vectors import INDEX_NAME
from tmws.errors import DatabaseError

DIM = 16


def test_lists_follow_pgvectors_guidance() -> None:
    assert ideal_lists(0) == MIN_LISTS and ideal_lists(3000) == MIN_LISTS
    assert ideal_lists(50_000) == 50 and ideal_lists(1_000_000) == 1000
    assert ideal_lists(4_000_000) == 2000  # sqrt above a million rows
    assert ideal_lists(10**12) == MAX_LISTS


def test_reindex_reason() -> None:
    fresh = IndexState(rows=3000, method="ivfflat", lists=100)  # the migration's index
    assert "far from 10" in (reindex_reason(fresh, probes=10) or "")
    fitting = IndexState(rows=3000, method="ivfflat", lists=10, built_rows=3000)
    assert reindex_reason(fitting, probes=10) is None
    # Lists fit the row count but the centroids came from an empty table.
    unbuilt = IndexState(rows=100_000, method="ivfflat", lists=100)
    assert "not built on this data" in (reindex_reason(unbuilt, probes=10) or "")
    grown = IndexState(rows=100_000, method="ivfflat", lists=100, built_rows=40_000)
    assert "grew from 40000" in (reindex_reason(grown, probes=10) or "")
    assert reindex_reason(IndexState(rows=0, method="ivfflat", lists=100), probes=10) is None
    assert reindex_reason(IndexState(rows=10**6, method="hnsw"), probes=10) is None
    leftover = IndexState(rows=10, method="ivfflat", lists=10, leftovers=[TEMP_NAME])
    assert "interrupted" in (reindex_reason(leftover, probes=10) or "")


def _settings(url: str, **overrides: str) -> Settings:
    # probes 1: the empty-table index's poor centroids show in recall at once.
    return make_settings(url, embedding_dim=str(DIM), vector_probes="1", **overrides)


def _clustered(count: int, clusters: int = 20, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    centres = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(clusters)]
    return ["[" + ",".join(f"{x + rng.gauss(0, 0.3):.5f}" for x in centres[i % clusters]) + "]"
            for i in range(count)]


async def _fill(url: str, count: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn, \
            conn.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO memories (namespace, content, embedding) VALUES ('ns', 'c', %s)",
            [(vector,) for vector in _clustered(count)])


async def _catalog(url: str) -> list[tuple[str, str, bool]]:
    """(name, definition, valid) of every index on memories."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT c.relname, pg_get_indexdef(c.oid), i.indisvalid FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'memories'::regclass ORDER BY 1")
        return [(str(r[0]), str(r[1]), bool(r[2])) for r in await cursor.fetchall()]


@pytest.fixture
async def filled(database_url: str) -> AsyncIterator[str]:
    """A scratch database whose ivfflat index was built empty (by the migration), then
    filled with 3000 clustered vectors."""
    async with scratch_database(database_url, migrate=_settings(database_url)) as url:
        await _fill(url, 3000)
        yield url


async def test_reindex_rebuilds_for_the_data_and_raises_recall(filled: str) -> None:
    settings = _settings(filled)
    before = await _catalog(filled)
    database = Database(filled, settings)
    await database.open()
    probe = _clustered(1, seed=99)[0]
    answered, done = 0, asyncio.Event()

    async def search() -> None:  # the service, searching throughout the rebuild
        nonlocal answered
        while not done.is_set():
            rows = await database.fetch(
                "SELECT id FROM memories ORDER BY embedding <=> %s::vector LIMIT 10", (probe,))
            # Answers, but not always 10 rows: the empty-built index's one probed list may
            # hold fewer (the low recall the rebuild fixes).
            assert len(rows) <= 10
            answered += 1
            await asyncio.sleep(0.005)

    searcher = asyncio.create_task(search())
    try:
        report = await reindex(filled, settings, sample=100)
    finally:
        done.set()
        await searcher
    try:
        assert answered > 0
        rows = await database.fetch(
            "SELECT id FROM memories ORDER BY embedding <=> %s::vector LIMIT 10", (probe,))
        assert len(rows) == 10  # and after, through the pool's (re-planned) statements
    finally:
        await database.close()
    assert report.action == "rebuilt" and report.method == "ivfflat" and report.rows == 3000
    assert report.lists_before == 100 and report.lists_after == ideal_lists(3000)
    assert report.sample == 100 and report.search == "ivfflat.probes = 1"
    assert report.recall_before is not None and report.recall_after is not None
    assert report.recall_after >= report.recall_before
    assert report.recall_before < report.recall_after  # random centroids vs k-means
    assert report.recall_after >= 0.95
    after = await _catalog(filled)
    assert [name for name, _, _ in after] == [name for name, _, _ in before]
    assert all(valid for _, _, valid in after)
    old = dict((n, d) for n, d, _ in before)[INDEX_NAME]
    new = dict((n, d) for n, d, _ in after)[INDEX_NAME]
    assert new == old.replace("lists='100'", f"lists='{ideal_lists(3000)}'") and new != old
    async with await psycopg.AsyncConnection.connect(filled) as conn:
        state = await vector_index_state(conn)
    assert state.built_rows == 3000 and state.lists == ideal_lists(3000)
    assert await maybe_reindex(filled, settings) is None  # it fits now
    table = format_reindex_report(report)
    assert "before" in table and "after" in table and "recall@10" in table


async def test_reindex_drops_leftovers_of_an_interrupted_run(filled: str) -> None:
    async with await psycopg.AsyncConnection.connect(filled, autocommit=True) as conn:
        # An interrupted concurrent build leaves an invalid index; a swap interrupted
        # before its drop leaves the old index.
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {TEMP_NAME} ON memories"
                               " (namespace)")
        await conn.execute(f"CREATE INDEX {OLD_NAME} ON memories (created_at)")
        # The live index itself invalid, as a cancelled CREATE INDEX CONCURRENTLY leaves it.
        await conn.execute("UPDATE pg_index SET indisvalid = false"
                           f" WHERE indexrelid = '{INDEX_NAME}'::regclass")
    assert (TEMP_NAME, False) in [(n, v) for n, _, v in await _catalog(filled)]
    settings = _settings(filled)
    assert "interrupted" in ((await maybe_reindex(filled, settings, sample=0, min_rows=10**6)) or
                             pytest.fail("no reindex")).reason
    async with await psycopg.AsyncConnection.connect(filled) as conn:
        state = await vector_index_state(conn)
    assert state.valid and not state.leftovers
    names = [n for n, _, _ in await _catalog(filled)]
    assert INDEX_NAME in names and TEMP_NAME not in names and OLD_NAME not in names


async def test_invalid_live_index_is_rebuilt(filled: str) -> None:
    async with await psycopg.AsyncConnection.connect(filled, autocommit=True) as conn:
        await conn.execute("UPDATE pg_index SET indisvalid = false"
                           f" WHERE indexrelid = '{INDEX_NAME}'::regclass")
    report = await reindex(filled, _settings(filled), sample=20)
    assert report.action == "rebuilt" and report.recall_before is None
    assert report.recall_after is not None and report.recall_after >= 0.95
    assert all(valid for _, _, valid in await _catalog(filled))


async def test_hnsw_and_empty_tables_have_nothing_to_rebuild(database_url: str) -> None:
    hnsw = _settings(database_url, vector_index="hnsw")
    async with scratch_database(database_url, migrate=hnsw) as url:
        before = await _catalog(url)
        await _fill(url, 300)
        report = await reindex(url, hnsw, sample=20)
        assert report.action == "nothing to do" and report.method == "hnsw"
        assert "TMWS_HNSW_EF_SEARCH" in report.reason
        assert report.recall_before is not None and report.search.startswith("hnsw.ef_search")
        assert await _catalog(url) == before
    async with scratch_database(database_url, migrate=_settings(database_url)) as url:
        report = await reindex(url, _settings(url))
        assert report.action == "nothing to do" and "import memories first" in report.reason
        assert report.sample == 0


async def test_bad_lists_and_unreachable_server_are_named() -> None:
    settings = _settings("postgresql://postgres@127.0.0.1:1/x")
    with pytest.raises(DatabaseError, match="--lists"):
        await reindex("postgresql://postgres@127.0.0.1:1/x", settings, lists=0)
    with pytest.raises(DatabaseError, match="cannot connect"):
        await reindex("postgresql://postgres@127.0.0.1:1/x", settings)


def _jsonl(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"content": f"note {i}: deploy {i % 37} rolled back"})
                            + "\n" for i in range(count)))
    return path


async def _lists(url: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return (await vector_index_state(conn)).lists


async def test_import_reindexes_when_the_index_no_longer_fits(database_url: str,
                                                             tmp_path: Path) -> None:
    settings = make_settings(database_url)
    data = _jsonl(tmp_path / "memories.jsonl", 600)
    async with scratch_database(database_url, migrate=settings) as url:
        env = {"TMWS_DATABASE_URL": url, "TMWS_DB_MAX_CONNECTIONS": "1"}
        skipped = await asyncio.to_thread(run_cli, "memories", "import", str(data),
                                          "--no-reindex", env=env)
        assert skipped.returncode == 0, skipped.stderr
        assert "rebuilt" not in skipped.stdout and await _lists(url) == 100
        done = await asyncio.to_thread(run_cli, "memories", "import", str(data), env=env)
        assert done.returncode == 0, done.stderr
        assert "imported 600 memories" in done.stdout
        assert re.search(r"rebuilt \(lists 100 is far from 10", done.stdout), done.stdout
        assert "recall@10" in done.stdout and await _lists(url) == ideal_lists(1200)
        again = await asyncio.to_thread(run_cli, "memories", "import", str(data), env=env)
        assert again.returncode == 0 and "rebuilt" not in again.stdout  # still fits
        report = await asyncio.to_thread(run_cli, "db", "reindex", "--json", "--sample", "5",
                                         "--lists", "12", env=env)
        assert report.returncode == 0, report.stderr
        parsed = json.loads(report.stdout)
        assert parsed["action"] == "rebuilt" and parsed["lists_after"] == 12
        assert parsed["rows"] == 1800 and parsed["sample"] == 5
        assert await _lists(url) == 12
