"""tmws backup / restore against the embedded PostgreSQL + pgvector and real Redis servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

from tests.conftest import PrivateRedis, make_settings, scratch_database
from tests.fix_server import server_env
from tmws.backup import (
    DUMP,
    MANIFEST,
    prune_backups,
    read_backup,
    redis_snapshot,
    restore,
    run_backup,
)
from tmws.config import Settings
from tmws.database import available_migrations
from tmws.engine import create_pattern_execution_engine
from tmws.errors import BackupError

Rows = dict[str, list[str]]


async def every_row(url: str) -> Rows:
    """Every row of every user table (as JSON text, sorted) and every sequence position."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        tables = await (await conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = 'public' "
            "ORDER BY 1, 2")).fetchall()
        rows: Rows = {}
        for schema, table in tables:
            query = sql.SQL("SELECT row_to_json(t)::text FROM {}.{} AS t").format(
                sql.Identifier(schema), sql.Identifier(table))
            rows[f"{schema}.{table}"] = sorted(
                str(r[0]) for r in await (await conn.execute(query)).fetchall())
        sequences = await (await conn.execute(
            "SELECT schemaname || '.' || sequencename || '=' || coalesce(last_value, 0) "
            "FROM pg_sequences ORDER BY 1")).fetchall()
        rows["sequences"] = [str(s[0]) for s in sequences]
        return rows


async def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
            sql.Identifier(name)))


def clock(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def on_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture
async def source(database_url: str, redis_url: str) -> AsyncIterator[tuple[str, Settings]]:
    """A scratch database with memories (embeddings, tags, two namespaces, shared ones),
    audit records and the shared pattern set, written through the engine."""
    async with scratch_database(database_url, migrate=make_settings(database_url)) as url:
        settings = make_settings(url, redis_url=redis_url)
        async with await create_pattern_execution_engine(settings) as engine:
            for namespace in ("team-a", "team-b"):
                for i in range(5):
                    await engine.memory.store(
                        namespace, f"{namespace} runbook step {i}: restart the worker",
                        tags=["ops", f"step-{i}"], importance=0.1 * (i + 1),
                        metadata={"step": i}, visibility="shared" if i == 0 else "private")
            await engine.execute("check health")
            await engine.execute("recall memories about the worker",
                                 context={"namespace": "team-a"})
        yield url, settings


async def test_backup_drop_restore_gives_back_every_row(
        source: tuple[str, Settings], database_url: str, tmp_path: Path) -> None:
    url, settings = source
    before = await every_row(url)
    assert before["public.memories"] and before["public.audit_log"]
    assert before["public.pattern_sets"]
    assert all('"embedding":null' not in row for row in before["public.memories"])

    result = await run_backup(settings, url, tmp_path)
    manifest = result.manifest
    assert result.directory.parent == tmp_path and result.directory.name.startswith("tmws-")
    assert manifest.row_counts["public.memories"] == 10
    assert manifest.schema_revision == available_migrations()[-1].revision
    assert manifest.pgvector_version
    assert {f.name for f in manifest.files} == {DUMP, "patterns.yaml"}
    assert read_backup(result.directory) == manifest

    await drop_database(database_url, url)
    restored = await restore(settings, result.directory, url)
    assert restored.database == urlsplit(url).path.lstrip("/") and restored.kept_as is None
    assert restored.applied == [] and restored.cache_error is None
    assert await every_row(url) == before

    # The restored database takes new writes: sequences continue past the restored ids.
    async with await create_pattern_execution_engine(settings) as engine:
        new_id = await engine.memory.store("team-a", "after the restore")
    assert new_id > max(json.loads(r)["id"] for r in before["public.memories"])


async def test_restore_refuses_a_database_with_tables_and_force_swaps_it(
        source: tuple[str, Settings], database_url: str, tmp_path: Path) -> None:
    url, settings = source
    result = await run_backup(settings, url, tmp_path)
    before = await every_row(url)
    with pytest.raises(BackupError, match="exists and has tables: restore never writes over"):
        await restore(settings, result.directory, url)

    # A client connected to the database (the running service) blocks the swap.
    async with await psycopg.AsyncConnection.connect(url):
        with pytest.raises(BackupError, match="is in use"):
            await restore(settings, result.directory, url, force=True)

    async with await create_pattern_execution_engine(settings) as engine:
        await engine.memory.store("team-a", "written after the backup")
    restored = await restore(settings, result.directory, url, force=True)
    assert restored.kept_as is not None
    try:
        assert await every_row(url) == before
        kept = await every_row(on_database(url, restored.kept_as))
        assert len(kept["public.memories"]) == len(before["public.memories"]) + 1
    finally:
        await drop_database(database_url, on_database(url, restored.kept_as))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        leftovers = await (await conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (urlsplit(url).path.lstrip("/") + "_restore_%",))).fetchall()
    assert leftovers == []  # the failed --force attempt dropped its copy


async def test_restore_into_an_empty_existing_database(
        source: tuple[str, Settings], database_url: str, tmp_path: Path) -> None:
    url, settings = source
    result = await run_backup(settings, url, tmp_path)
    async with scratch_database(database_url) as empty:
        restored = await restore(settings, result.directory, empty)
        assert restored.kept_as is None
        assert await every_row(empty) == await every_row(url)


async def test_tampered_and_incomplete_backups_are_refused(
        source: tuple[str, Settings], database_url: str, tmp_path: Path) -> None:
    url, settings = source
    result = await run_backup(settings, url, tmp_path)
    target = on_database(url, f"tmws_never_{uuid.uuid4().hex[:8]}")
    dump = result.directory / DUMP
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=r"checksum mismatch for .*database\.dump"):
        await restore(settings, result.directory, target)

    (result.directory / MANIFEST).unlink()
    with pytest.raises(BackupError, match=r"is an incomplete backup: it has no manifest\.json"):
        await restore(settings, result.directory, target)
    with pytest.raises(BackupError, match="is not a directory"):
        await restore(settings, tmp_path / "nothing-here", target)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        created = await (await conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s",
            (urlsplit(target).path.lstrip("/"),))).fetchone()
    assert created is None


async def test_keep_prunes_only_older_complete_backups(
        source: tuple[str, Settings], tmp_path: Path) -> None:
    url, settings = source
    start = datetime(2030, 1, 1, tzinfo=UTC)
    made = []
    for day in range(3):
        result = await run_backup(settings, url, tmp_path,
                                  now=clock(start + timedelta(days=day)))
        made.append(result.directory)
    (made[0] / "operator-notes.txt").write_text("not tmws's")
    unfinished = tmp_path / "tmws-20291231T000000Z"
    unfinished.mkdir()
    (unfinished / DUMP).write_bytes(b"partial")
    unrelated = tmp_path / "other-backups"
    unrelated.mkdir()

    newest = await run_backup(settings, url, tmp_path, keep=2,
                              now=lambda: start + timedelta(days=3))
    assert newest.pruned.removed == [made[1]]
    assert newest.pruned.left_behind == [made[0]]  # its backup files gone, the note kept
    assert sorted(p.name for p in made[0].iterdir()) == ["operator-notes.txt"]
    assert newest.pruned.incomplete == [unfinished] and (unfinished / DUMP).exists()
    assert unrelated.is_dir() and made[2].is_dir() and newest.directory.is_dir()

    # The backup just written is never pruned, even when it is not the newest by date.
    older = await run_backup(settings, url, tmp_path, keep=1, now=lambda: start)
    assert older.directory.is_dir() and (older.directory / MANIFEST).exists()
    assert newest.directory in older.pruned.removed and made[2] in older.pruned.removed
    assert prune_backups(tmp_path, 1, current=older.directory).removed == []


async def test_redis_snapshot_waits_for_bgsave(private_redis: PrivateRedis,
                                               tmp_path: Path) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.set("tmws:result:x", "cached")
    before = int(client.lastsave().timestamp())
    client.close()
    target = tmp_path / "copy.rdb"
    snapshot = await redis_snapshot(private_redis.url, target, timeout=30)
    assert snapshot.lastsave > before
    assert Path(snapshot.source).parent == tmp_path
    data = target.read_bytes()
    assert data.startswith(b"REDIS") and b"tmws:result:x" in data


async def test_redis_snapshot_times_out_cleanly(private_redis: PrivateRedis,
                                                tmp_path: Path) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.mset({f"key-{i}": i for i in range(50)})
    client.config_set("rdb-key-save-delay", 1_000_000)  # 1 s per key: a 50 s BGSAVE
    client.close()
    with pytest.raises(BackupError, match=r"did not finish within 0\.5 s .*--redis-timeout"):
        await redis_snapshot(private_redis.url, tmp_path / "copy.rdb", timeout=0.5)
    assert not (tmp_path / "copy.rdb").exists()


async def test_remote_redis_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match=r"Redis at 192\.0\.2\.1:6379 is not on this machine"):
        await redis_snapshot("redis://:secret@192.0.2.1:6379/0", tmp_path / "x.rdb", timeout=1)


async def test_backup_with_redis_and_a_failed_one_leaves_nothing(
        source: tuple[str, Settings], private_redis: PrivateRedis, tmp_path: Path) -> None:
    url, _ = source
    settings = make_settings(url, redis_url=private_redis.url)
    result = await run_backup(settings, url, tmp_path / "ok", redis=True, redis_timeout=30)
    assert result.manifest.redis is not None
    assert (result.directory / "redis.rdb").read_bytes().startswith(b"REDIS")
    assert read_backup(result.directory) == result.manifest

    client = redis.Redis.from_url(private_redis.url)
    client.mset({f"key-{i}": i for i in range(50)})
    client.config_set("rdb-key-save-delay", 1_000_000)
    client.close()
    with pytest.raises(BackupError, match="did not finish within"):
        await run_backup(settings, url, tmp_path / "failed", redis=True, redis_timeout=0.5)
    assert list((tmp_path / "failed").iterdir()) == []


def tmws(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tmws", *args], env=server_env(env),
                          capture_output=True, text=True, timeout=300, check=False)


async def test_cli_backup_restore_with_verification(
        source: tuple[str, Settings], database_url: str, redis_url: str,
        tmp_path: Path) -> None:
    url, _ = source
    env = {"TMWS_DATABASE_URL": url, "TMWS_REDIS_URL": redis_url}
    made = await asyncio.to_thread(tmws, env, "backup", "--dir", str(tmp_path), "--keep", "1")
    assert made.returncode == 0, made.stderr
    backup = made.stdout.split("backup written to ", 1)[1].splitlines()[0]

    refused = await asyncio.to_thread(tmws, env, "restore", backup)
    assert refused.returncode == 2
    assert "exists and has tables" in refused.stderr and "Traceback" not in refused.stderr

    name = f"tmws_restored_{uuid.uuid4().hex[:8]}"
    try:
        restored = await asyncio.to_thread(tmws, env, "restore", backup, "--database", name)
        assert restored.returncode in (0, 1), restored.stdout + restored.stderr
        assert "row counts match the backup" in restored.stdout
        assert "verification:" in restored.stdout
        assert await every_row(on_database(url, name)) == await every_row(url)
    finally:
        await drop_database(database_url, on_database(url, name))

    dump = Path(backup) / DUMP
    data = dump.read_bytes()
    dump.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    tampered = await asyncio.to_thread(tmws, env, "restore", backup, "--database", name)
    assert tampered.returncode == 2 and "checksum mismatch" in tampered.stderr


async def test_cli_embedded_default_restore_replaces_only_with_force(tmp_path: Path) -> None:
    env = {"TMWS_DATA_DIR": str(tmp_path / "data")}
    upgraded = await asyncio.to_thread(tmws, env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    made = await asyncio.to_thread(tmws, env, "backup")
    assert made.returncode == 0, made.stderr
    backup = made.stdout.split("backup written to ", 1)[1].splitlines()[0]
    assert Path(backup).parent == tmp_path / "data" / "backups"

    refused = await asyncio.to_thread(tmws, env, "restore", backup)
    assert refused.returncode == 2 and "--force" in refused.stderr
    replaced = await asyncio.to_thread(tmws, env, "restore", backup, "--force")
    assert replaced.returncode in (0, 1), replaced.stdout + replaced.stderr
    assert "the replaced database is kept as 'tmws_pre_restore_" in replaced.stdout
