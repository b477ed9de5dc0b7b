from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.conftest import make_settings
from tmws.database import Database, get_pool_stats
from tmws.database._pool import PRE_PING_BYPASS_SECONDS
from tmws.errors import DatabaseError


async def test_pool_stats_report_size_use_and_errors(database_url: str) -> None:
    database = Database(database_url, make_settings(database_url, db_max_connections="3",
                                                    db_max_overflow="1"))
    await database.open()
    try:
        assert await database.ping()
        stats = get_pool_stats()
        assert stats["min_size"] == 3 and stats["max_size"] == 4
        assert stats["size"] >= 1 and stats["in_use"] == 0
        assert stats["idle"] == stats["size"]
        assert stats["errors"] == 0 and stats["queries"] == 1
        async with database.connection():
            assert database.pool_stats()["in_use"] == 1
    finally:
        await database.close()


async def test_a_smaller_minimum_opens_the_rest_on_demand(database_url: str) -> None:
    database = Database(database_url, make_settings(
        database_url, db_max_connections="4", db_max_overflow="0", db_min_connections="1"))
    await database.open()
    try:
        assert database.pool_stats()["min_size"] == 1
        assert database.pool_stats()["size"] == 1  # only the minimum at start
        await asyncio.gather(*(database.fetch("SELECT pg_sleep(0.2)") for _ in range(4)))
        assert database.pool_stats()["size"] > 1  # grown for the concurrent queries
        assert database.pool_stats()["max_size"] == 4
    finally:
        await database.close()


async def test_statement_timeout_is_enforced(database_url: str) -> None:
    database = Database(database_url, make_settings(database_url, db_statement_timeout="50"))
    await database.open()
    try:
        with pytest.raises(DatabaseError, match="TMWS_DB_STATEMENT_TIMEOUT"):
            await database.fetch("SELECT pg_sleep(1)")
        assert database.pool_stats()["errors"] == 1
        assert await database.ping()  # the pool survives
    finally:
        await database.close()


async def test_unreachable_database_fails_fast_with_the_variable_named() -> None:
    url = "postgresql://postgres@127.0.0.1:1/postgres"
    database = Database(url, make_settings(url, db_pool_timeout="1"))
    with pytest.raises(DatabaseError, match="TMWS_DB_POOL_TIMEOUT"):
        await database.open()


async def test_pre_ping_replaces_connections_the_server_dropped(database_url: str) -> None:
    database = Database(database_url, make_settings(database_url, db_max_connections="2"))
    await database.open()
    try:
        assert await database.ping()
        # The server drops every pooled connection (an admin, a restart, an idle timeout).
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name LIKE 'tmws/%'")
        await asyncio.sleep(PRE_PING_BYPASS_SECONDS + 0.1)  # past the bypass window
        assert await database.ping()  # pre-ping found them dead and reconnected
        assert database.available
    finally:
        await database.close()
