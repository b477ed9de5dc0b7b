from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import make_settings, scratch_database
from tests.test_cli import run as run_cli
from tmws.database import (
    Database,
    ImportReport,
    Rejection,
    export_memories,
    import_memories,
)
from tmws.embeddings import HashProvider


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url, make_settings(database_url))
    await db.open()
    yield db
    await db.close()


@pytest.fixture
def provider() -> HashProvider:
    return HashProvider(384)


@pytest.fixture
async def bulk_database(database_url: str) -> AsyncIterator[str]:
    """A second, migrated database beside the shared one, dropped afterwards."""
    async with scratch_database(database_url, migrate=make_settings(database_url)) as conninfo:
        yield conninfo


def jsonl(*lines: object) -> list[bytes]:
    """File lines: strings verbatim (blank, malformed), anything else as JSON."""
    return [(line if isinstance(line, str) else json.dumps(line)).encode() + b"\n"
            for line in lines]


async def rows_of(database: Database, namespace: str) -> list[dict[str, Any]]:
    return await database.fetch(
        "SELECT content, memory_type, importance::text AS importance, tags, metadata,"
        " visibility, created_at, embedding IS NOT NULL AS embedded"
        " FROM memories WHERE namespace = %s ORDER BY id", (namespace,))


async def exported(database: Database, **options: Any) -> list[dict[str, Any]]:
    sink = io.BytesIO()
    await export_memories(database, sink.write, **options)
    return [json.loads(line) for line in sink.getvalue().splitlines()]


async def test_bad_lines_are_reported_and_good_ones_written(
        bulk_database: str, provider: HashProvider, namespace: str) -> None:
    # Its own database: a shared memory is readable from every namespace of the shared one.
    database = Database(bulk_database, make_settings(bulk_database))
    await database.open()
    try:
        await _import_mixed_file(database, provider, namespace)
    finally:
        await database.close()


async def _import_mixed_file(database: Database, provider: HashProvider, namespace: str
                             ) -> None:
    lines = jsonl(
        {"content": "  disk alerts fire at 90%  ", "memory_type": "runbook", "importance": 0.7,
         "tags": ["Ops", "ops", " disk "], "metadata": {"source": "wiki", "n": [1, 2]},
         "visibility": "shared", "created_at": "2021-03-04T05:06:07.123456+02:00"},
        "",
        '{"content": "unterminated"',
        {"importance": 0.3},
        {"content": "too important", "importance": 1.5},
        {"content": "painted", "colour": "red"},
        {"content": "tagged", "tags": ["ok", 3]},
        {"content": "plain default fields"},
        "   ",
        {"content": "   "},
        {"content": "x", "visibility": "public"},
        "[1, 2]",
        {"content": "x" * 100_001},
        {"content": "flag", "importance": True},
        {"content": "when", "created_at": "last tuesday"},
        {"content": "exported before", "id": 17, "created_at": "2020-01-01T00:00:00"},
    )
    report = await import_memories(database, provider, lines, namespace=namespace, batch_size=2)
    # The rules and words of every other write (tmws.inputs.MemoryInput), located.
    assert report.rejected == [
        Rejection(3, "malformed JSON (Input data was truncated)"),
        Rejection(4, "missing required field `content`"),
        Rejection(5, "Expected `float` <= 1.0 - at `$.importance`"),
        Rejection(6, "unknown field `colour`"),
        Rejection(7, "Expected `str`, got `int` - at `$.tags[1]`"),
        Rejection(10, "memory content is empty"),
        Rejection(11, "Invalid enum value 'public' - at `$.visibility`"),
        Rejection(12, "Expected `object`, got `array`"),
        Rejection(13, "Expected `str` of length <= 100000 - at `$.content`"),
        Rejection(14, "Expected `float`, got `bool` - at `$.importance`"),
        Rejection(15, "created_at is not an ISO 8601 timestamp: 'last tuesday'"),
    ]
    assert report.written == 3 and report.settled_through == 16
    rows = await rows_of(database, namespace)
    assert all(row.pop("embedded") for row in rows)
    first, second, third = rows
    assert first["content"] == "disk alerts fire at 90%" and first["memory_type"] == "runbook"
    assert first["importance"] == "0.7" and first["tags"] == ["disk", "ops"]
    assert first["metadata"] == {"source": "wiki", "n": [1, 2]}
    assert first["visibility"] == "shared"
    assert first["created_at"].isoformat(timespec="microseconds").startswith(
        "2021-03-04T03:06:07.123456")
    assert second | {"created_at": None} == {
        "content": "plain default fields", "memory_type": "general", "importance": "0.5",
        "tags": [], "metadata": {}, "visibility": "private", "created_at": None}
    # Without an offset a timestamp is UTC; an exported id is accepted and not reused.
    assert third["created_at"].isoformat().startswith("2020-01-01T00:00:00")
    ids = await database.fetch("SELECT id FROM memories WHERE namespace = %s AND id = 17",
                               (namespace,))
    assert not ids


async def test_values_postgresql_cannot_hold_lose_only_their_rows(
        database: Database, provider: HashProvider, namespace: str) -> None:
    # PostgreSQL text cannot hold NUL, in a column or inside jsonb: once refused only by the
    # server (or its driver) row by row, now by the memory rules, naming the field. (A
    # refusal only the server knows is tested below, with an operator's constraint.)
    lines = jsonl({"content": "first good"}, {"content": "nul \u0000 inside"},
                  {"content": "second good"},
                  {"content": "nul in metadata", "metadata": {"k": "a\u0000b"}},
                  {"content": "third good"})
    report = await import_memories(database, provider, lines, namespace=namespace,
                                   batch_size=10)
    assert report.written == 3
    assert [r.line for r in report.rejected] == [2, 4]
    assert report.rejected[0].reason.startswith("content contains a NUL character")
    assert report.rejected[1].reason.startswith("metadata contains a NUL character")
    rows = await rows_of(database, namespace)
    assert [row["content"] for row in rows] == ["first good", "second good", "third good"]


async def test_a_constraint_only_the_server_knows(bulk_database: str,
                                                  provider: HashProvider) -> None:
    """An operator's own CHECK: the COPY fails, the savepoint pass keeps the good rows."""
    async with await psycopg.AsyncConnection.connect(bulk_database, autocommit=True) as conn:
        await conn.execute("ALTER TABLE memories ADD CONSTRAINT no_secrets"
                           " CHECK (memory_type <> 'secret')")
    target = Database(bulk_database, make_settings(bulk_database))
    await target.open()
    try:
        lines = jsonl({"content": "a"}, {"content": "b", "memory_type": "secret"},
                      {"content": "c"}, {"content": "d"})
        report = await import_memories(target, provider, lines, batch_size=3)
        assert report.written == 3
        assert report.rejected == [Rejection(2, 'rejected by the database: new row for relation'
                                                ' "memories" violates check constraint'
                                                ' "no_secrets"')]
        assert [r["content"] for r in await rows_of(target, "default")] == ["a", "c", "d"]
    finally:
        await target.close()


async def test_export_import_round_trip_across_databases(
        database: Database, bulk_database: str, provider: HashProvider, namespace: str) -> None:
    memories: list[dict[str, Any]] = [
        {"content": "Ünïcode — and \"quotes\" \\ backslashes\nnewlines", "importance": 0.7,
         "tags": ["b", "a"], "metadata": {"nested": {"list": [1, 2.5, None, True]}},
         "created_at": "1999-12-31T23:59:59.999999+00:00"},
        {"content": "second", "memory_type": "decision", "importance": 0.123456789},
        {"content": "!!!"},  # nothing to embed: stored without a vector, still exported
    ]
    await import_memories(database, provider, jsonl(*memories), namespace=namespace)
    await import_memories(database, provider, jsonl({"content": "elsewhere"}),
                          namespace=namespace + "-other")

    source = await exported(database, namespace=namespace, batch_size=2)
    assert [m["content"] for m in source] == [m["content"] for m in memories]
    assert {m["namespace"] for m in source} == {namespace}
    assert source[0]["created_at"] == "1999-12-31T23:59:59.999999+00:00"
    assert source[0]["importance"] == 0.7 and source[0]["tags"] == ["a", "b"]
    assert source[1]["importance"] == 0.12345679  # as PostgreSQL's real holds it
    assert "embedding" not in source[0]

    target = Database(bulk_database, make_settings(bulk_database))
    await target.open()
    try:
        file = b"".join(json.dumps(m).encode() + b"\n" for m in source)
        report = await import_memories(target, provider, io.BytesIO(file))
        assert report == ImportReport(written=3, rejected=[], settled_through=3)
        copied = await exported(target)
        assert [{**m, "id": None} for m in copied] == [{**m, "id": None} for m in source]
        vectors = [await db.fetch("SELECT embedding::text AS v FROM memories"
                                  " WHERE namespace = %s ORDER BY id", (namespace,))
                   for db in (database, target)]
        assert vectors[0] == vectors[1] and vectors[0][2]["v"] is None
    finally:
        await target.close()


async def test_export_streams_in_batches_and_filters(
        database: Database, provider: HashProvider, namespace: str) -> None:
    await import_memories(database, provider, jsonl(*({"content": f"row {i}"} for i in range(5))),
                          namespace=namespace)
    chunks: list[bytes] = []
    progress: list[tuple[int, int]] = []
    count = await export_memories(database, chunks.append, namespace=namespace, batch_size=2,
                                  progress=lambda done, total: progress.append((done, total)))
    assert count == 5 and [chunk.count(b"\n") for chunk in chunks] == [2, 2, 1]
    assert progress == [(2, 5), (4, 5), (5, 5)]
    assert await exported(database, namespace=namespace + "-nobody") == []


async def test_ten_thousand_rows_take_seconds(bulk_database: str,
                                              provider: HashProvider) -> None:
    target = Database(bulk_database, make_settings(bulk_database))
    await target.open()
    try:
        lines = jsonl(*({"content": f"note {i}: deploy {i % 97} rolled back after cache"
                                    f" latency alert {i % 13}", "tags": [f"t{i % 7}"],
                         "namespace": f"ns{i % 5}"} for i in range(10_000)))
        started = time.perf_counter()
        report = await import_memories(target, provider, lines)
        seconds = time.perf_counter() - started
        assert report.written == 10_000 and not report.rejected
        print(f"imported 10000 rows in {seconds:.2f}s ({10_000 / seconds:.0f} rows/s)")
        assert seconds < 60
        embedded = await target.fetch(
            "SELECT count(*) AS n FROM memories WHERE embedding IS NOT NULL")
        assert embedded[0]["n"] == 10_000
    finally:
        await target.close()


def test_cli_import_export_exit_codes_and_summary(database_url: str, namespace: str,
                                                   tmp_path: Path) -> None:
    env = {"TMWS_DATABASE_URL": database_url, "TMWS_DB_MAX_CONNECTIONS": "1"}
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"".join(jsonl({"content": "alpha"}, "", {"content": "beta"})))
    done = run_cli("memories", "import", str(good), "--namespace", namespace, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "imported 2 memories, rejected 0 lines\n"
    assert "3/3 (100%)" in done.stderr

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b"".join(jsonl({"content": "gamma"}, "{nope", {"content": "delta"},
                                     *({"content": ""} for _ in range(52)))))
    done = run_cli("memories", "import", str(mixed), "--namespace", namespace,
                   "--batch-size", "2", env=env)
    assert done.returncode == 1, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "imported 2 memories, rejected 53 lines"
    assert out[1] == ("line 2: malformed JSON (JSON is malformed: object keys must be strings"
                      " (byte 1))")
    assert out[2] == "line 4: memory content is empty"  # the same words as every write
    assert len(out) == 1 + 50 + 1 and out[-1] == "... and 3 more rejected lines"

    missing = run_cli("memories", "import", str(tmp_path / "absent.jsonl"), env=env)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert "absent.jsonl" in missing.stderr
    bad_size = run_cli("memories", "import", str(good), "--batch-size", "0", env=env)
    assert bad_size.returncode == 2 and "--batch-size" in bad_size.stderr

    output = tmp_path / "out" / "export.jsonl"
    output.parent.mkdir()
    done = run_cli("memories", "export", "--namespace", namespace, "--output", str(output),
                   env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"exported 4 memories to {output}\n"
    assert [json.loads(line)["content"] for line in output.read_text().splitlines()] == [
        "alpha", "beta", "gamma", "delta"]
    assert list(output.parent.iterdir()) == [output]  # no temporary file left behind
    done = run_cli("memories", "export", "--namespace", namespace, env=env)
    assert done.returncode == 0 and done.stdout == output.read_text()
    assert "exported 4 memories" in done.stderr
    unwritable = run_cli("memories", "export", "--output", str(tmp_path / "no" / "x"), env=env)
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
