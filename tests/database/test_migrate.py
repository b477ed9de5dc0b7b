from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PLAIN_POSTGRES_URL, scratch_database
from tmws.database import PGVECTOR_HELP, available_migrations, require_current_schema, upgrade
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
