"""Audit records in the database, against the real embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from psycopg.rows import dict_row

from tests.conftest import make_settings, scratch_database
from tmws import PatternDefinition, PatternExecutionEngine, PatternType
from tmws._request_context import request_id
from tmws.audit import ACTIONS, SYSTEM_ACTOR, AuditLog
from tmws.database import Database, EmbeddedPostgres, available_migrations, upgrade
from tmws.database._migrate import _ALEMBIC_LOCK, alembic_config
from tmws.engine import create_pattern_execution_engine
from tmws.errors import TmwsError
from tmws.handlers import HandlerContext
from tmws.inputs import MemoryInput


async def _rows(database_url: str, actor: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(database_url,
                                                     row_factory=dict_row) as conn:
        cursor = await conn.execute(
            "SELECT * FROM audit_log WHERE actor = %s ORDER BY id", (actor,))
        return await cursor.fetchall()


async def test_executions_are_recorded(engine: PatternExecutionEngine, namespace: str,
                                       database_url: str) -> None:
    async def boom(ctx: HandlerContext) -> None:
        raise TmwsError("the tool broke")

    engine.bind_handler("boom", boom)
    engine.registry.register(PatternDefinition(
        name="breaker", pattern_type=PatternType.INFRASTRUCTURE,
        trigger_pattern=r"\bshatter\b", cost_tokens=42, priority=100, handler="boom"))
    marker = f"marker{uuid.uuid4().hex}"
    ctx = {"namespace": namespace}
    token = request_id.set("req-audit-1")
    try:
        miss = await engine.execute(f"run tool {marker}", context=ctx)
        hit = await engine.execute(f"run tool {marker}", context=ctx)
    finally:
        request_id.reset(token)
    nothing = await engine.execute(f"what is the weather in {marker}", context=ctx)
    broken = await engine.execute(f"shatter {marker}", "fast", context=ctx)
    assert miss.success and not miss.cache_hit and hit.cache_hit
    assert not nothing.success and not broken.success
    assert await engine.audit.flush()

    rows = await _rows(database_url, namespace)
    assert [(r["action"], r["target"], r["outcome"], r["tokens"], r["request_id"])
            for r in rows] == [
        ("execute", "execute_mcp_tool", "success", 50, "req-audit-1"),
        ("execute", "execute_mcp_tool", "success", 0, "req-audit-1"),
        ("execute", None, "no_pattern_matched", 0, None),
        ("execute", "breaker", "handler_error", 42, None),
    ]
    details = [r["detail"] for r in rows]
    assert details[0] == {"pattern_type": "infrastructure", "cache_hit": False,
                          "mode": "balanced"}
    assert details[1] == {**details[0], "cache_hit": True}
    assert details[2]["cache_hit"] is False and details[2]["mode"] == "balanced"
    assert details[3] == {"pattern_type": "infrastructure", "cache_hit": False, "mode": "fast"}
    for row, result in zip(rows, (miss, hit, nothing, broken), strict=True):
        assert row["duration_ms"] == pytest.approx(result.execution_time_ms, rel=1e-3, abs=1e-3)
        assert abs(row["occurred_at"] - datetime.now(UTC)) < timedelta(minutes=5)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        leaked = await (await conn.execute(
            "SELECT count(*) FROM audit_log WHERE audit_log::text LIKE %s",
            (f"%{marker}%",))).fetchone()
    assert leaked == (0,)  # no query text anywhere in a record
    stats = engine.get_stats()["audit_stats"]
    assert stats["recorded"] >= 4 and stats["pending"] == 0
    assert stats["written"] == stats["recorded"] and stats["dropped"] == 0


async def test_changes_through_the_public_helper(engine: PatternExecutionEngine,
                                                 namespace: str, database_url: str) -> None:
    engine.audit.record(namespace, "pattern.register", target="my_pattern", outcome="success",
                        detail={"pattern_type": "memory"})
    engine.audit.record(namespace, "memory.delete", target=1234, outcome="not_found")
    engine.audit.record(SYSTEM_ACTOR, "pattern.reload", outcome="success",
                        detail={"patterns": 15})
    # Values the database cannot hold are cleaned instead of poisoning the batch.
    engine.audit.record(namespace, "memory.store", target="a\x00b", outcome="success",
                        detail={"odd": object(), "nul": "x\x00y"})
    engine.audit.record(namespace, "memory.store", target="\ud800z", outcome="success",
                        detail={"surrogate": "\ud800"})
    assert await engine.audit.flush()
    rows = await _rows(database_url, namespace)
    assert [(r["action"], r["target"], r["outcome"], r["tokens"]) for r in rows] == [
        ("pattern.register", "my_pattern", "success", 0),
        ("memory.delete", "1234", "not_found", 0),
        ("memory.store", "ab", "success", 0),
        ("memory.store", "?z", "success", 0),
    ]
    assert rows[0]["detail"] == {"pattern_type": "memory"} and rows[1]["detail"] is None
    assert "invalid_detail" in rows[2]["detail"] and "invalid_detail" in rows[3]["detail"]


async def test_engine_operations_audit_from_the_python_api(
        engine: PatternExecutionEngine, namespace: str, database_url: str) -> None:
    """The operations HTTP, the CLI and the Python API share: each change audited once."""
    record = await engine.store_memory(namespace, MemoryInput(content="audited once"))
    assert await engine.delete_memory(namespace, record.id)
    assert not await engine.delete_memory(namespace, record.id)
    deleted = await engine.clear_cache(actor=namespace)
    assert await engine.audit.flush()
    rows = await _rows(database_url, namespace)
    assert [(r["action"], r["target"], r["outcome"]) for r in rows] == [
        ("memory.store", str(record.id), "success"),
        ("memory.delete", str(record.id), "success"),
        ("memory.delete", str(record.id), "not_found"),
        ("cache.clear", None, "success"),
    ]
    assert rows[0]["detail"] == {"visibility": "private"}
    assert rows[3]["detail"] == {"deleted": deleted}
    assert {r["action"] for r in rows} <= set(ACTIONS)  # the documented list keeps up


async def test_the_writer_runs_by_itself(engine: PatternExecutionEngine, namespace: str,
                                         database_url: str) -> None:
    await engine.execute("run tool background", context={"namespace": namespace})
    deadline = time.monotonic() + 10
    while not await _rows(database_url, namespace):  # no flush(): the writer task does it
        assert time.monotonic() < deadline, engine.audit.stats()
        await asyncio.sleep(0.1)


async def test_close_writes_what_is_buffered(database_url: str, namespace: str) -> None:
    engine = await create_pattern_execution_engine(make_settings(database_url))
    for i in range(3):
        await engine.execute(f"run tool t{i}", context={"namespace": namespace})
    await engine.close()  # no flush before: close must write them
    assert len(await _rows(database_url, namespace)) == 3
    stats = engine.audit.stats()
    assert stats["written"] == stats["recorded"] == 3 and stats["pending"] == 0
    engine.audit.record(namespace, "execute", outcome="success")  # after close: not kept
    assert engine.audit.stats()["pending"] == 0


async def test_disabled_audit_writes_nothing(database_url: str, namespace: str) -> None:
    settings = make_settings(database_url, audit_enabled="false")
    async with await create_pattern_execution_engine(settings) as engine:
        result = await engine.execute("run tool x", context={"namespace": namespace})
        assert result.success
        engine.audit.record(namespace, "memory.store", outcome="success")
        await engine.audit.flush()
        assert engine.get_stats()["audit_stats"]["recorded"] == 0
    assert await _rows(database_url, namespace) == []


async def _flush_until_written(audit: AuditLog, deadline_seconds: float = 30) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not await audit.flush():
        assert time.monotonic() < deadline, audit.stats()
        await asyncio.sleep(0.25)


async def test_outage_loses_nothing_and_the_cap_drops_the_oldest(
        tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path_factory.mktemp("audit-outage")
    embedded = EmbeddedPostgres(data_dir)
    conninfo = embedded.start()
    await upgrade(conninfo)
    database = Database(conninfo, make_settings(conninfo, db_pool_timeout="1",
                                                db_max_connections="1"))
    await database.open()
    # Long intervals: the test decides when to write.
    audit = AuditLog(database, flush_interval=3600, batch_size=10**6)
    small = AuditLog(database, capacity=10, flush_interval=3600, batch_size=10**6)
    restarted: EmbeddedPostgres | None = None
    try:
        for i in range(5):
            audit.record("alice", "execute", target=f"before-{i}", outcome="success")
        assert await audit.flush()

        embedded.stop()  # the server goes away
        caplog.set_level(logging.WARNING, logger="tmws.audit")
        for i in range(20):
            audit.record("alice", "execute", target=f"during-{i}", outcome="success", tokens=i)
        for i in range(25):
            small.record("bob", "execute", target=f"small-{i}", outcome="success")
        for _ in range(3):
            assert not await audit.flush()
        assert not await small.flush()
        stats = audit.stats()
        assert stats["pending"] == 20 and stats["dropped"] == 0
        assert stats["written"] == 5 and stats["write_errors"] == 3
        assert small.stats()["pending"] == 10 and small.stats()["dropped"] == 15
        warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(warnings) == 2  # once per outage per log, not once per record or attempt

        restarted = EmbeddedPostgres(data_dir)
        restarted.start()
        await _flush_until_written(audit)
        await _flush_until_written(small)
        stats = audit.stats()
        assert stats == {**stats, "recorded": 25, "written": 25, "dropped": 0, "pending": 0}
        rows = await _rows(conninfo, "alice")
        assert [r["target"] for r in rows] == (
            [f"before-{i}" for i in range(5)] + [f"during-{i}" for i in range(20)])
        assert [r["tokens"] for r in rows[5:]] == list(range(20))
        # The cap kept the newest 10 of 25.
        assert [r["target"] for r in await _rows(conninfo, "bob")] == [
            f"small-{i}" for i in range(15, 25)]

        # A record the server refuses costs only itself, not its batch.
        await database.fetch("ALTER TABLE audit_log ADD CONSTRAINT no_poison"
                             " CHECK (actor <> 'poison')")
        for actor in ("carol", "poison", "carol"):
            audit.record(actor, "execute", outcome="success")
        assert await audit.flush()
        assert len(await _rows(conninfo, "carol")) == 2
        assert audit.stats()["rejected"] == 1 and audit.stats()["pending"] == 0
    finally:
        await audit.close()
        await small.close()
        await database.close()
        if restarted is not None:
            restarted.stop()
        embedded.stop()


async def test_migration_is_reversible(database_url: str) -> None:
    async with scratch_database(database_url) as fresh:
        assert fresh != database_url
        await upgrade(fresh)

        async def state() -> tuple[str, bool, set[str]]:
            async with await psycopg.AsyncConnection.connect(fresh) as conn:
                version = await (await conn.execute(
                    "SELECT version_num FROM alembic_version")).fetchone()
                table = await (await conn.execute(
                    "SELECT to_regclass('audit_log') IS NOT NULL")).fetchone()
                indexes = await (await conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'audit_log'")).fetchall()
            assert version is not None and table is not None
            return version[0], table[0], {r[0] for r in indexes}

        head = available_migrations()[-1].revision
        version, exists, indexes = await state()
        assert version == head and exists
        assert {"idx_audit_occurred", "idx_audit_actor_occurred"} <= indexes

        def downgrade() -> None:
            with _ALEMBIC_LOCK:
                command.downgrade(alembic_config(fresh), "0002")

        await asyncio.to_thread(downgrade)
        assert await state() == ("0002", False, set())
        reapplied = [m.revision for m in available_migrations()][2:]
        assert [m.revision for m in await upgrade(fresh)] == reapplied
        assert (await state())[:2] == (head, True)


async def test_close_counts_what_cannot_be_written(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://postgres@127.0.0.1:1/postgres"
    database = Database(url, make_settings(url, db_pool_timeout="1"))  # never reachable
    audit = AuditLog(database, close_timeout=2)
    for i in range(3):
        audit.record("dave", "memory.store", target=i, outcome="success")
    assert not await audit.flush()
    assert audit.stats()["pending"] == 3 and audit.stats()["write_errors"] == 1
    caplog.set_level(logging.WARNING, logger="tmws.audit")
    await audit.close()
    assert audit.stats() == {"enabled": True, "recorded": 3, "written": 0, "dropped": 3,
                             "rejected": 0, "write_errors": audit.stats()["write_errors"],
                             "pending": 0, "spilled": 0, "replayed": 0}
    assert any("closed with 3 record(s) unwritten" in r.getMessage() for r in caplog.records)


async def test_nothing_is_lost_to_overload_or_shutdown_spilled_then_replayed(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The finding: at shutdown after an overload, "audit log closed with 100000 record(s)
    unwritten". Now what the database cannot take goes to the spill directory, and the next
    start writes it: the count in the table matches the count recorded."""
    data_dir = tmp_path_factory.mktemp("audit-spill")
    spill = tmp_path / "spill"
    embedded = EmbeddedPostgres(data_dir)
    conninfo = embedded.start()
    await upgrade(conninfo)
    embedded.stop()  # down for the whole first life of the log
    database = Database(conninfo, make_settings(conninfo, db_pool_timeout="1"))
    first = AuditLog(database, capacity=50, flush_interval=0.05, close_timeout=1,
                     spill_dir=spill)
    for i in range(500):  # ten times the capacity: the writer moves the excess to disk
        first.record("erin", "execute", target=f"r-{i}", outcome="success", tokens=i,
                     detail={"n": i})
        if i % 100 == 99:
            await asyncio.sleep(0.2)
    await first.close()
    stats = first.stats()
    assert stats["dropped"] == 0 and stats["written"] == 0 and stats["pending"] == 0
    assert stats["spilled"] == stats["recorded"] == 500
    assert len(list(spill.glob("audit-*.jsonl"))) >= 2  # spilled while running, and at close

    # A log on another database leaves those files alone.
    elsewhere = AuditLog(Database("postgresql://postgres@127.0.0.1:5432/postgres",
                                  make_settings(conninfo)), spill_dir=spill)
    elsewhere.start()
    await asyncio.sleep(0.3)
    await elsewhere.close()
    assert elsewhere.stats()["replayed"] == 0

    restarted = EmbeddedPostgres(data_dir)
    restarted.start()
    try:
        second = AuditLog(database, flush_interval=0.05, spill_dir=spill)
        second.start()
        deadline = time.monotonic() + 30
        while second.stats()["replayed"] < 500:
            assert time.monotonic() < deadline, second.stats()
            await asyncio.sleep(0.1)
        await second.close()
        rows = await _rows(conninfo, "erin")
        assert len(rows) == 500 and {r["target"] for r in rows} == {f"r-{i}" for i in range(500)}
        assert sorted(r["tokens"] for r in rows) == list(range(500))
        assert list(spill.glob("audit-*")) == []  # every file written and removed
    finally:
        await database.close()
        restarted.stop()
