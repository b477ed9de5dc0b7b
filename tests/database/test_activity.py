from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import make_settings
from tmws.database import Database, get_pool_stats, service_connections, slow_statements
from tmws.database._activity import STATEMENTS_HELP
from tmws.errors import DatabaseError


def _in_another_process(env: dict[str, str]) -> dict[str, object]:
    """The diagnosis snippet of deploy/README.md, Troubleshooting, run as an operator does:
    a fresh interpreter with no pool of its own."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
    done = subprocess.run(
        [sys.executable, "-c", "import json; from tmws.database import get_pool_stats; "
         "print(json.dumps(get_pool_stats()))"],
        capture_output=True, text=True, env={**base, **env}, timeout=60)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, object] = json.loads(done.stdout)
    return parsed


async def test_pool_connections_are_named_and_seen_from_another_process(
        database_url: str) -> None:
    database = Database(database_url, make_settings(database_url, db_max_connections="3",
                                                    db_max_overflow="0"), role="probe")
    await database.open()
    try:
        name = f"tmws/{os.getpid()}/probe"
        assert database.application_name == name
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            count = await (await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (name,))).fetchone()
        assert count is not None and count[0] == 3  # every pooled connection
        async with database.connection():  # one busy while the other process looks
            report = await asyncio.to_thread(_in_another_process,
                                             {"TMWS_DATABASE_URL": database_url})
    finally:
        await database.close()
    assert report["source"] == "pg_stat_activity"
    pools = {p["application_name"]: p for p in report["pools"]}  # type: ignore[attr-defined]
    mine = pools[name]
    assert mine["pid"] == os.getpid() and mine["role"] == "probe" and mine["total"] == 3
    assert mine["idle"] + mine["active"] + mine["idle_in_transaction"] == 3
    server = report["server"]
    assert isinstance(server, dict) and server["max_connections"] > 0


def test_in_process_pools_are_reported_as_before(database_url: str) -> None:
    async def check() -> None:
        database = Database(database_url, make_settings(database_url))
        await database.open()
        try:
            assert get_pool_stats()["name"] == "tmws"  # this process's pool, not the view
        finally:
            await database.close()
    asyncio.run(check())


def test_without_a_server_the_report_says_so(tmp_path: Path) -> None:
    report = _in_another_process({"TMWS_DATA_DIR": str(tmp_path)})
    assert "not running" in str(report["error"])
    unreachable = service_connections("postgresql://postgres@127.0.0.1:1/x")
    assert "cannot read pg_stat_activity" in unreachable["error"]


async def test_pg_stat_statements_on_the_embedded_server(database_url: str) -> None:
    # The embedded bundle ships no contrib modules: the slow-query list needs an external
    # server with the extension preloaded (deploy/README.md, Troubleshooting), and says so.
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        shipped = await (await conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'"
        )).fetchone()
    assert shipped is not None and shipped[0] == 0
    with pytest.raises(DatabaseError) as caught:
        await asyncio.to_thread(slow_statements, database_url)
    assert str(caught.value) == STATEMENTS_HELP
    assert "shared_preload_libraries" in STATEMENTS_HELP
