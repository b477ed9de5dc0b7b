from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from alembic import command

from tests.conftest import PLAIN_POSTGRES_URL, scratch_database
from tests.loopback import free_port
from tmws.database import PGVECTOR_HELP, available_migrations, require_current_schema, upgrade
from tmws.database._migrate import _ALEMBIC_LOCK, alembic_config
from tmws.errors import DatabaseError, ExtensionMissingError

REPO_ROOT = Path(__file__).resolve().parents[2]


async def test_rerunning_upgrade_is_a_no_op(database_url: str) -> None:
    assert await upgrade(database_url) == []
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (await conn.execute("SELECT version_num FROM alembic_version")).fetchall()
    assert [r[0] for r in rows] == [available_migrations()[-1].revision]


async def test_concurrent_upgrades_serialise(database_url: str) -> None:
    results = await asyncio.gather(*(upgrade(database_url) for _ in range(4)))
    assert all(applied == [] for applied in results)


async def test_guide_indexes_exist(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (await conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'memories'")).fetchall()
    names = {r[0] for r in rows}
    assert {"idx_memory_content_pattern", "idx_memory_importance_created",
            "idx_memory_tags"} <= names


async def test_server_without_pgvector_gets_install_instructions() -> None:
    # The machine's PostgreSQL 15 has no pgvector; it must be running for this test.
    with pytest.raises(ExtensionMissingError) as caught:
        await upgrade(PLAIN_POSTGRES_URL)
    message = str(caught.value)
    assert message == PGVECTOR_HELP
    assert "pgvector" in message and "apt-get install" in message


async def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="cannot connect to PostgreSQL"):
        await upgrade("postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2")


async def test_unmigrated_database_is_refused_with_the_fix() -> None:
    with pytest.raises(DatabaseError, match=r"pending: 0001.*tmws db upgrade"):
        await require_current_schema(PLAIN_POSTGRES_URL)


async def test_current_schema_passes(database_url: str) -> None:
    await require_current_schema(database_url)


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _late_proxy(target: str, delay: float) -> tuple[str, asyncio.Task[None]]:
    """A conninfo for ``target`` through a TCP port that starts listening after ``delay``
    seconds: a database container that is still starting."""
    info = psycopg.conninfo.conninfo_to_dict(target)
    port = free_port()

    host, target_port = str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if host.startswith("/"):  # the embedded server listens on a Unix socket
            up_reader, up_writer = await asyncio.open_unix_connection(
                f"{host}/.s.PGSQL.{target_port}")
        else:
            up_reader, up_writer = await asyncio.open_connection(host, target_port)
        await asyncio.gather(_forward(reader, up_writer), _forward(up_reader, writer))

    async def serve_later() -> None:
        await asyncio.sleep(delay)
        server = await asyncio.start_server(relay, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    task = asyncio.create_task(serve_later())
    proxied = (f"postgresql://{info.get('user') or 'postgres'}@127.0.0.1:{port}"
               f"/{info.get('dbname') or 'postgres'}?connect_timeout=2")
    return proxied, task


async def test_upgrade_waits_for_a_server_that_is_still_starting(database_url: str) -> None:
    proxied, proxy = await _late_proxy(database_url, delay=1.5)
    try:
        with pytest.raises(DatabaseError, match="cannot connect to PostgreSQL"):
            await upgrade(proxied)  # no wait: the error at once
        started = time.monotonic()
        assert await upgrade(proxied, wait=30) == []
        assert time.monotonic() - started < 15
    finally:
        proxy.cancel()


async def test_start_up_waits_for_migrations_run_beside_it(database_url: str) -> None:
    async with scratch_database(database_url) as fresh:
        waiting = asyncio.create_task(require_current_schema(fresh, wait=60))
        await asyncio.sleep(1.5)
        assert not waiting.done(), "start-up went on against an unmigrated database"
        await upgrade(fresh)
        await asyncio.wait_for(waiting, timeout=15)


async def test_start_up_wait_runs_out_with_the_fix() -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseError, match=r"pending: 0001.*tmws db upgrade"):
        await require_current_schema(PLAIN_POSTGRES_URL, wait=1.5)
    assert time.monotonic() - started >= 1.5


def _alembic(*args: str, database_url: str, cwd: Path = REPO_ROOT
             ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
    env["TMWS_DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


async def test_guides_alembic_command_migrates_a_fresh_database(database_url: str) -> None:
    async with scratch_database(database_url) as fresh:
        done = _alembic("upgrade", "head", database_url=fresh)
        assert done.returncode == 0, done.stderr
        await require_current_schema(fresh)
        again = _alembic("upgrade", "head", database_url=fresh)
        assert again.returncode == 0, again.stderr


async def test_alembic_from_an_install_directory(database_url: str, tmp_path: Path) -> None:
    """/opt/tmws with deploy/alembic.ini and no source checkout: the migrations are found
    in the installed package."""
    shutil.copy(REPO_ROOT / "deploy" / "alembic.ini", tmp_path / "alembic.ini")
    async with scratch_database(database_url) as fresh:
        done = _alembic("upgrade", "head", database_url=fresh, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        await require_current_schema(fresh)


def test_guides_alembic_command_explains_missing_pgvector() -> None:
    done = _alembic("upgrade", "head", database_url=PLAIN_POSTGRES_URL)
    assert done.returncode != 0
    assert PGVECTOR_HELP in done.stderr


async def test_alembic_from_a_checkout_with_tmws_installed_from_a_wheel(
        database_url: str, tmp_path: Path) -> None:
    """`python -m alembic upgrade head` from the repository root (deploy/README.md, Step 4),
    with tmws installed as a wheel (not editable): the checkout's sources, first on sys.path
    and without the compiled core, once shadowed the installed package and failed to
    import."""
    checkout, site = tmp_path / "checkout", tmp_path / "site"
    shutil.copytree(REPO_ROOT / "migrations", checkout / "migrations",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", checkout)
    shutil.copytree(REPO_ROOT / "tmws", checkout / "tmws", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "_tmws_core*.so"))
    # The installed package: the core compiled, the migrations inside (a wheel's layout).
    shutil.copytree(REPO_ROOT / "tmws", site / "tmws", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert not list((checkout / "tmws").glob("*.so")) and list((site / "tmws").glob("*.so"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
    async with scratch_database(database_url) as fresh:
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=checkout,
            env={**env, "TMWS_DATABASE_URL": fresh, "PYTHONPATH": str(site)},
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        await require_current_schema(fresh)


async def test_stored_lexemes_migrate_a_populated_table(database_url: str) -> None:
    """0005 on a table with rows: every row gets its tsvector, the full-text index moves onto
    the column, recall finds the old rows, and upgrading again changes nothing."""
    async with scratch_database(database_url) as fresh:
        def to_0004() -> None:
            with _ALEMBIC_LOCK:
                command.upgrade(alembic_config(fresh), "0004")

        await asyncio.to_thread(to_0004)
        async with await psycopg.AsyncConnection.connect(fresh, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO memories (namespace, content) SELECT 'ns', 'rotating keys ' || i"
                " FROM generate_series(1, 300) AS i")
        applied = [m.revision for m in await upgrade(fresh)]
        assert applied[0] == "0005"
        assert await upgrade(fresh) == []
        async with await psycopg.AsyncConnection.connect(fresh, autocommit=True) as conn:
            empty = await (await conn.execute(
                "SELECT count(*) FROM memories WHERE content_tsv IS DISTINCT FROM"
                " to_tsvector('english', content)"
                " || array_to_tsvector(ARRAY['ns ' || namespace, 'vis ' || visibility])"
            )).fetchone()
            index = await (await conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_memory_content_pattern'"
            )).fetchone()
            await conn.execute("INSERT INTO memories (namespace, content)"
                               " VALUES ('ns', 'a new memory about certificates')")
            found = await (await conn.execute(
                "SELECT count(*) FROM memories WHERE content_tsv @@ to_tsquery('english',"
                " 'rotate & key') OR content_tsv @@ to_tsquery('english', 'certificate')"
            )).fetchone()
        assert empty == (0,)
        assert index is not None and "gin (content_tsv)" in index[0]
        assert found == (301,)
