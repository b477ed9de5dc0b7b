"""The memory change feed (tmws.database._changes, migration 0007) on a real PostgreSQL: a
load, then catch-ups that see every committed write of every connection exactly once,
whatever order the writers commit in, however they write (COPY, UPDATE, TRUNCATE), and
through PgBouncer in transaction mode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import struct
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.conftest import make_settings
from tests.fix_pgbouncer import PgBouncer
from tmws.database import Database, import_memories
from tmws.database._changes import CatchUp, ChangeFeed, ChangeLogPruner, MemoryRow
from tmws.embeddings import HashProvider

DIM = 384  # the tests' embedding dimension (make_settings)


@pytest.fixture
async def database(migrated_database: str) -> AsyncIterator[Database]:
    db = Database(migrated_database, make_settings(migrated_database))
    await db.open()
    yield db
    await db.close()


@pytest.fixture
async def writer(migrated_database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Another connection, writing as another worker, instance or operator would."""
    async with await psycopg.AsyncConnection.connect(migrated_database,
                                                     autocommit=True) as conn:
        yield conn


def vector(values: Sequence[float]) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def floats(sent: bytes) -> list[float]:
    """pgvector's binary form back to floats: int16 dim, int16 unused, dim float4."""
    dim, unused = struct.unpack_from(">hh", sent)
    assert unused == 0 and len(sent) == 4 + 4 * dim
    return list(struct.unpack_from(f">{dim}f", sent, 4))


def one_vector(first: float) -> list[float]:
    """A DIM-long vector whose values float4 holds exactly."""
    return [first, -1.25, 3.0] + [0.5] * (DIM - 3)


async def insert(conn: psycopg.AsyncConnection[Any], namespace: str, content: str,
                 **columns: Any) -> int:
    names = ["namespace", "content", *columns]
    values = [namespace, content, *columns.values()]
    cursor = await conn.execute(
        f"INSERT INTO memories ({', '.join(names)})"
        f" VALUES ({', '.join(['%s'] * len(names))}) RETURNING id", values)
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def loaded(feed: ChangeFeed, batch_rows: int = 5000) -> list[MemoryRow]:
    rows: list[MemoryRow] = []
    async for batch in feed.load(batch_rows):
        assert 0 < len(batch) <= batch_rows
        rows.extend(batch)
    return rows


def ids(caught: CatchUp) -> set[int]:
    return {row.id for row in caught.rows}


async def nothing_new(feed: ChangeFeed) -> None:
    again = await feed.catch_up()
    assert (again.rows, again.deleted, again.reload) == ([], [], False)


# --- load -------------------------------------------------------------------------------------

async def test_load_returns_every_memory_as_the_index_needs_it(
        database: Database, writer: psycopg.AsyncConnection[Any]) -> None:
    created = datetime(2021, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
    first = await insert(writer, "agent-1", "Rotating the auth tokens, and the auth keys",
                         importance=0.75, created_at=created,
                         embedding=vector(one_vector(0.25)))
    second = await insert(writer, "team-a", "shared runbook for certificates",
                          visibility="shared", importance=0.1)
    third = await insert(writer, "agent-1", "a third memory", embedding=vector(one_vector(-2.5)))
    feed = ChangeFeed(database)
    assert feed.behind and feed.horizon is None and feed.last_caught_up is None
    rows = {row.id: row for row in await loaded(feed, batch_rows=2)}
    assert set(rows) == {first, second, third}
    assert not feed.behind and feed.horizon is not None and feed.last_caught_up is not None

    one = rows[first]
    assert (one.namespace, one.shared, one.importance) == ("agent-1", False, 0.75)
    assert one.created_us == int(created.timestamp()) * 1_000_000 + 123456
    assert one.embedding is not None and floats(one.embedding) == one_vector(0.25)
    assert one.tsv == "'auth':3,7 'key':8 'ns agent-1' 'rotat':1 'token':4 'vis private'"
    two = rows[second]
    assert (two.shared, two.importance, two.embedding) == (True, pytest.approx(0.1), None)
    assert "'ns team-a'" in two.tsv and "'vis shared'" in two.tsv
    assert rows[third].embedding is not None
    assert floats(rows[third].embedding) == one_vector(-2.5)
    # The same memory read by a catch-up is the same MemoryRow, field for field.
    await writer.execute("UPDATE memories SET tags = '{x}' WHERE id IN (%s, %s, %s)",
                         (first, second, third))
    caught = await feed.catch_up()
    assert {row.id: row for row in caught.rows} == rows


async def test_changes_during_a_load_come_with_the_next_catch_up(
        database: Database, writer: psycopg.AsyncConnection[Any]) -> None:
    before = [await insert(writer, "ns", f"memory {i}", importance=0.5) for i in range(5)]
    feed = ChangeFeed(database)
    seen: list[MemoryRow] = []
    added = 0
    async for batch in feed.load(batch_rows=2):
        seen.extend(batch)
        if added == 0:
            # After the snapshot, before the end of the stream: none of it is streamed.
            added = await insert(writer, "ns", "written during the load")
            await writer.execute("UPDATE memories SET importance = 0.9 WHERE id = %s",
                                 (batch[0].id,))
            await writer.execute("DELETE FROM memories WHERE id = %s", (batch[1].id,))
            # Not loaded until the stream ends: a catch-up meanwhile says reload.
            assert (await feed.catch_up()).reload
    assert sorted(row.id for row in seen) == before
    assert {row.importance for row in seen} == {0.5}
    caught = await feed.catch_up()
    assert caught.reload is False
    assert ids(caught) == {added, seen[0].id}
    assert [row.importance for row in caught.rows if row.id == seen[0].id] == [
        pytest.approx(0.9)]
    assert caught.deleted == [seen[1].id]
    await nothing_new(feed)


async def test_an_abandoned_load_leaves_the_feed_unloaded(
        database: Database, writer: psycopg.AsyncConnection[Any]) -> None:
    for i in range(3):
        await insert(writer, "ns", f"memory {i}")
    feed = ChangeFeed(database)
    async with contextlib.aclosing(feed.load(batch_rows=1)) as batches:
        async for _ in batches:
            break
    assert feed.behind and (await feed.catch_up()).reload
    assert len(await loaded(feed)) == 3 and not feed.behind


# --- catch-up ---------------------------------------------------------------------------------

async def test_catch_up_returns_what_another_connection_wrote(
        database: Database, writer: psycopg.AsyncConnection[Any]) -> None:
    kept = await insert(writer, "ns", "left alone")
    reweighed = await insert(writer, "ns", "importance changes")
    reembedded = await insert(writer, "ns", "embedding changes", embedding=vector(one_vector(1)))
    removed = await insert(writer, "ns", "deleted")
    feed = ChangeFeed(database)
    assert len(await loaded(feed)) == 4
    await nothing_new(feed)

    added = await insert(writer, "other", "inserted after the load", visibility="shared")
    await writer.execute("UPDATE memories SET importance = 0.25 WHERE id = %s", (reweighed,))
    await writer.execute("UPDATE memories SET embedding = %s::vector WHERE id = %s",
                         (vector(one_vector(7)), reembedded))
    await writer.execute("DELETE FROM memories WHERE id = %s", (removed,))
    statements = database.pool_stats()["queries"]
    caught = await feed.catch_up()
    assert database.pool_stats()["queries"] == statements + 1  # one statement, one round trip
    assert not caught.reload and caught.query_tsv is None
    assert ids(caught) == {added, reweighed, reembedded} and kept not in ids(caught)
    assert caught.deleted == [removed]
    rows = {row.id: row for row in caught.rows}
    assert rows[added].shared and rows[added].namespace == "other"
    assert rows[reweighed].importance == 0.25
    embedding = rows[reembedded].embedding
    assert embedding is not None and floats(embedding) == one_vector(7)
    await nothing_new(feed)

    # Inserted and deleted between two catch-ups: only "gone" is news.
    fleeting = await insert(writer, "ns", "here and gone")
    await writer.execute("DELETE FROM memories WHERE id = %s", (fleeting,))
    caught = await feed.catch_up()
    assert (caught.rows, caught.deleted) == ([], [fleeting])


async def test_a_transaction_that_commits_late_is_not_skipped(
        database: Database, writer: psycopg.AsyncConnection[Any],
        migrated_database: str) -> None:
    """T1 takes the smaller seq and commits after T2: a reader resuming after the largest
    seq it saw would lose T1's memory for good."""
    feed = ChangeFeed(database)
    await loaded(feed)
    async with await psycopg.AsyncConnection.connect(migrated_database) as slow:
        late = await insert(slow, "ns", "T1: inserted first, committed last")  # open
        early = await insert(writer, "ns", "T2: inserted second, committed first")
        seqs = dict(await (await writer.execute(
            "SELECT memory_id, seq FROM memory_changes")).fetchall())
        # T1's row is invisible here, its seq taken: the largest visible seq is T2's.
        assert list(seqs) == [early]
        assert (await feed.catch_up()).rows[0].id == early
        await nothing_new(feed)
        await slow.commit()
    seqs = dict(await (await writer.execute(
        "SELECT memory_id, seq FROM memory_changes")).fetchall())
    assert seqs[late] < seqs[early]
    caught = await feed.catch_up()
    assert ids(caught) == {late} and caught.deleted == []
    await nothing_new(feed)


async def test_rolled_back_writes_never_appear(
        database: Database, writer: psycopg.AsyncConnection[Any],
        migrated_database: str) -> None:
    feed = ChangeFeed(database)
    await loaded(feed)
    async with await psycopg.AsyncConnection.connect(migrated_database) as conn:
        await insert(conn, "ns", "rolled back")
        await conn.rollback()
        with contextlib.suppress(psycopg.errors.CheckViolation):
            async with conn.transaction():
                await insert(conn, "ns", "in a transaction that fails")
                await insert(conn, "ns", "")  # violates the content check
        # In a transaction that commits: a savepoint rolled back, one that fails.
        async with conn.transaction():
            kept = await insert(conn, "ns", "kept")
            async with conn.transaction() as savepoint:
                await insert(conn, "ns", "in a savepoint rolled back")
                raise psycopg.Rollback(savepoint)
            with contextlib.suppress(psycopg.errors.CheckViolation):
                async with conn.transaction():
                    await insert(conn, "ns", "in a savepoint that fails")
                    await insert(conn, "ns", "")
    caught = await feed.catch_up()
    assert [row.tsv for row in caught.rows] == ["'kept':1 'ns ns' 'vis private'"]
    assert (caught.deleted, ids(caught)) == ([], {kept})
    committed = await (await writer.execute(
        "SELECT count(*) FROM memory_changes")).fetchone()
    assert committed == (1,)  # its row is the only one committed
    await nothing_new(feed)


async def test_bulk_writes_are_captured_and_truncate_asks_for_a_reload(
        database: Database, writer: psycopg.AsyncConnection[Any]) -> None:
    feed = ChangeFeed(database)
    await loaded(feed)
    lines = [json.dumps({"content": f"imported memory {i}", "namespace": "bulk"}) + "\n"
             for i in range(3)]
    report = await import_memories(database, HashProvider(DIM), lines)
    assert report.written == 3
    caught = await feed.catch_up()
    assert len(caught.rows) == 3 and all(row.embedding is not None for row in caught.rows)

    # A raw COPY of many rows: captured in one statement-level trigger call.
    async with writer.cursor().copy("COPY memories (namespace, content) FROM STDIN") as copy:
        for i in range(2000):
            await copy.write_row(("copied", f"copied row {i}"))
    # Under session_replication_role = replica (some loaders, logical replication) too.
    async with writer.transaction():
        await writer.execute("SET LOCAL session_replication_role = replica")
        replicated = await insert(writer, "ns", "applied as a replica would")
    caught = await feed.catch_up()
    assert len(caught.rows) == 2001 and replicated in ids(caught)
    assert {row.namespace for row in caught.rows} == {"copied", "ns"}

    await writer.execute("TRUNCATE memories")
    caught = await feed.catch_up()
    assert caught.reload and (caught.rows, caught.deleted) == ([], [])
    assert feed.behind and (await feed.catch_up()).reload  # until load() runs
    assert await loaded(feed) == []
    await nothing_new(feed)
    # Emptying the log itself (an operator's clean-up) loses what it held: reload too.
    await insert(writer, "ns", "written before the log was emptied")
    await writer.execute("TRUNCATE memory_changes")
    assert (await feed.catch_up()).reload


async def test_query_tsv_is_what_postgres_makes_of_the_query(
        database: Database, writer: psycopg.AsyncConnection[Any]) -> None:
    feed = ChangeFeed(database)
    await loaded(feed)
    for text in ("Rotating the signing keys on Friday!", "the and of", "",
                 "café naïve résumé — déjà vu", "don't stop-words: e-mail@example.com 3.14"):
        expected = await (await writer.execute(
            "SELECT to_tsvector('english', %s)::text", (text,))).fetchone()
        assert expected is not None
        caught = await feed.catch_up(text)
        assert caught.query_tsv == expected[0]
    assert (await feed.catch_up()).query_tsv is None
    # Also when the feed must reload (before a load): one round trip either way.
    assert (await ChangeFeed(database).catch_up("keys")).query_tsv == "'key':1"


async def test_concurrent_catch_ups_are_serialised_and_deliver_each_change_once(
        migrated_database: str) -> None:
    class Counting(Database):
        """Counts the statements in flight at once."""

        in_flight = most = 0

        async def fetch(self, query: Any, params: Any = (), *,
                        prepare: bool | None = None) -> list[dict[str, Any]]:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                return await super().fetch(query, params, prepare=prepare)
            finally:
                self.in_flight -= 1

    database = Counting(migrated_database, make_settings(migrated_database))
    await database.open()
    try:
        feed = ChangeFeed(database)
        await loaded(feed)
        committed: list[int] = []
        rolled_back: list[int] = []

        async def write(url: str, seed: int) -> None:
            """Transactions of one to three inserts, open across catch-ups; every fifth
            rolls back."""
            chance = random.Random(seed)
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                for n in range(15):
                    mine: list[int] = []
                    async with conn.transaction() as transaction:
                        for _ in range(chance.randint(1, 3)):
                            mine.append(await insert(conn, "ns", f"writer {seed} memory {n}"))
                            await asyncio.sleep(chance.random() / 200)
                        if n % 5 == 4:
                            raise psycopg.Rollback(transaction)  # swallowed by the block
                    (rolled_back if n % 5 == 4 else committed).extend(mine)

        writers = asyncio.gather(*(write(migrated_database, seed) for seed in range(4)))
        results: list[CatchUp] = []
        while not writers.done():
            results += await asyncio.gather(*(feed.catch_up(f"q{i}") for i in range(8)))
        await writers
        statements = database.pool_stats()["queries"]
        results.append(await feed.catch_up())
        assert database.pool_stats()["queries"] == statements + 1
        assert database.most == 1  # never two catch-up statements at once
        delivered = [row.id for caught in results for row in caught.rows]
        assert sorted(delivered) == sorted(committed)  # each exactly once
        assert len(committed) > 40 and rolled_back and not set(rolled_back) & set(delivered)
        assert all(not caught.reload and not caught.deleted for caught in results)
        assert [caught.query_tsv for caught in results[:8]] == [
            f"'q{i}':1" for i in range(8)]
    finally:
        await database.close()


# --- pruning ----------------------------------------------------------------------------------

async def test_prune_removes_only_old_changes_and_a_feed_falls_behind(
        database: Database, writer: psycopg.AsyncConnection[Any]) -> None:
    retention = 0.5
    feed = ChangeFeed(database, retention=retention)
    await loaded(feed)
    old = await insert(writer, "ns", "old by both clocks")
    recent = await insert(writer, "ns", "old transaction, recent changed_at")
    await feed.catch_up()  # its snapshot: both above had finished
    await asyncio.sleep(retention + 0.05)
    # A transaction that began before that snapshot could commit only now: its changed_at
    # (insert time) is old, its xid is not below the snapshot's xmin.
    young = await insert(writer, "ns", "young transaction, old changed_at")
    await writer.execute("UPDATE memory_changes SET changed_at = now() - interval '1 hour'"
                         " WHERE memory_id IN (%s, %s)", (old, young))
    await writer.execute("UPDATE memory_changes SET changed_at = now() WHERE memory_id = %s",
                         (recent,))
    # A feed whose snapshots are all younger than the retention deletes nothing.
    assert await ChangeFeed(database, retention=retention).prune() == 0
    assert await feed.prune() == 1
    left = await (await writer.execute(
        "SELECT memory_id FROM memory_changes ORDER BY memory_id")).fetchall()
    assert [row[0] for row in left] == [recent, young]

    # Not caught up for more than half the retention: behind, and a catch-up says reload.
    assert feed.behind
    assert (await feed.catch_up()).reload
    assert {row.id for row in await loaded(feed)} == {old, recent, young}
    assert not feed.behind
    last = feed.last_caught_up
    assert last is not None and time.monotonic() - last < retention / 2
    await nothing_new(feed)


# --- through PgBouncer ------------------------------------------------------------------------

async def test_the_feed_works_through_pgbouncer_in_transaction_mode(
        pgbouncer: PgBouncer, migrated_database: str,
        writer: psycopg.AsyncConnection[Any]) -> None:
    url = pgbouncer.url_for(urlsplit(migrated_database).path.lstrip("/"))
    database = Database(url, make_settings(url, database_pool_mode="transaction",
                                           db_pool_timeout="10"))
    await database.open()
    try:
        first = await insert(writer, "ns", "before the load")
        feed = ChangeFeed(database)
        assert [row.id for row in await loaded(feed)] == [first]
        # Several feeds catching up at once share the pooler's two server connections.
        feeds = [feed] + [ChangeFeed(database) for _ in range(3)]
        for other in feeds[1:]:
            await loaded(other)
        async with await psycopg.AsyncConnection.connect(migrated_database) as slow:
            late = await insert(slow, "ns", "committed last")
            early = await insert(writer, "ns", "committed first")
            caught = await asyncio.gather(*(f.catch_up("keys") for f in feeds))
            assert all(ids(c) == {early} and c.query_tsv == "'key':1" for c in caught)
            await slow.commit()
        await writer.execute("DELETE FROM memories WHERE id = %s", (first,))
        caught = await asyncio.gather(*(f.catch_up() for f in feeds))
        assert all(ids(c) == {late} and c.deleted == [first] for c in caught)
    finally:
        await database.close()


async def test_a_process_without_an_index_still_prunes_the_log(
        database: Database, writer: psycopg.AsyncConnection[Any]) -> None:
    """The triggers log every write even where nothing reads the log (TMWS_RECALL_INDEX
    postgres, the default): the engine's pruner keeps it bounded all the same."""
    pruner = ChangeLogPruner(database, retention=0.3, every=0.05)
    pruner.start()
    try:
        for i in range(5):
            await writer.execute("INSERT INTO memories (namespace, content) VALUES (%s, %s)",
                                 ("prune", f"note {i}"))
        deadline = time.monotonic() + 20
        while (await database.fetch("SELECT count(*) AS n FROM memory_changes"))[0]["n"]:
            assert time.monotonic() < deadline, "the log was never pruned"
            await asyncio.sleep(0.05)
        assert pruner.pruned == 5
    finally:
        await pruner.close()
