"""tmws through PgBouncer in transaction pooling mode (TMWS_DATABASE_POOL_MODE=transaction).

A real pgbouncer (tests/fix_pgbouncer.py) with two server connections per database sits in
front of the session's PostgreSQL; the tests run more clients than that at once, so
statements of different clients interleave on shared server connections.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.conftest import make_settings, scratch_database
from tests.fix_pgbouncer import DEFAULT_POOL_SIZE, ONE_SERVER, PgBouncer
from tmws.config import Settings
from tmws.database import Database, reembed, reindex, upgrade
from tmws.database._migrate import ADVISORY_LOCK_KEY, available_migrations
from tmws.embeddings import HashProvider
from tmws.engine import create_pattern_execution_engine
from tmws.errors import ConfigError, DatabaseError
from tmws.memory import MemoryStore
from tmws.models import PatternDefinition, PatternType


def pooled(pgbouncer: PgBouncer, url: str | None = None, **overrides: str) -> Settings:
    """Test settings for tmws behind the pooler, in transaction mode."""
    return make_settings(url or pgbouncer.url, database_pool_mode="transaction",
                         db_pool_timeout="10", **overrides)


@pytest.fixture
async def bounced(pgbouncer: PgBouncer, database_url: str) -> AsyncIterator[str]:
    """A migrated database of the test's own; yields its URL through the pooler."""
    async with scratch_database(database_url, migrate=make_settings(database_url)) as url:
        yield pgbouncer.url_for(urlsplit(url).path.lstrip("/"))


# --- what breaks without the setting ---------------------------------------------------------

async def test_session_mode_pool_cannot_open_through_pgbouncer(pgbouncer: PgBouncer) -> None:
    """The statement timeout travels as the `options` startup parameter, which PgBouncer
    refuses: the session-mode pool never gets a connection."""
    settings = make_settings(pgbouncer.url, db_pool_timeout="2", db_min_connections="1")
    database = Database(pgbouncer.url, settings)
    with pytest.raises(DatabaseError, match="could not open"):
        await database.open()


async def test_one_server_connection_shares_prepared_statements_and_sets(
        pgbouncer: PgBouncer) -> None:
    """Why prepared statements and SET must go: two clients on one server session (a pool of
    one) see each other's — a collision, and a setting the second never made."""
    url = pgbouncer.url_for(ONE_SERVER)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as first, \
            await psycopg.AsyncConnection.connect(url, autocommit=True) as second:
        await first.execute("SELECT 1", prepare=True)  # _pg3_0 on the only server session
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            await second.execute("SELECT 2", prepare=True)  # its own _pg3_0
        await first.execute("SET ivfflat.probes = 7")
        cursor = await second.execute("SHOW ivfflat.probes")
        assert await cursor.fetchone() == ("7",)
        await first.execute("RESET ALL")
        await first.execute("DEALLOCATE ALL")


# --- settings --------------------------------------------------------------------------------

def test_the_pool_mode_setting_is_checked() -> None:
    url = "postgresql://tmws@pgbouncer:6432/tmws"
    with pytest.raises(ConfigError, match="TMWS_DATABASE_POOL_MODE"):
        Settings.from_env({"TMWS_DATABASE_URL": url, "TMWS_DATABASE_POOL_MODE": "statement"})
    with pytest.raises(ConfigError, match=r"TMWS_DATABASE_POOL_MODE.*embedded"):
        Settings.from_env({"TMWS_DATABASE_POOL_MODE": "transaction"})
    with pytest.raises(ConfigError, match="TMWS_DATABASE_DIRECT_URL"):
        Settings.from_env({"TMWS_DATABASE_URL": url, "TMWS_DATABASE_DIRECT_URL": "db:5432"})
    settings = Settings.from_env({"TMWS_DATABASE_URL": url,
                                  "TMWS_DATABASE_POOL_MODE": "transaction"})
    assert settings.database_pool_mode == "transaction"
    assert Settings.from_env({}).database_pool_mode == "session"


# --- migrations ------------------------------------------------------------------------------

async def test_migrations_run_through_pgbouncer(pgbouncer: PgBouncer, database_url: str
                                                ) -> None:
    """Every revision in one transaction under a transaction-level lock: applied, a no-op
    the second time, and no lock left behind on a server connection others share."""
    async with scratch_database(database_url) as direct:
        name = urlsplit(direct).path.lstrip("/")
        url = pgbouncer.url_for(name)
        settings = pooled(pgbouncer, url)
        applied = await upgrade(url, settings)
        assert [m.revision for m in applied] == [m.revision for m in available_migrations()]
        assert await upgrade(url, settings) == []
        async with await psycopg.AsyncConnection.connect(direct, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                (ADVISORY_LOCK_KEY,))
            assert await cursor.fetchone() == (0,)
            cursor = await conn.execute("SELECT count(*) FROM tmws_embedding_config")
            assert await cursor.fetchone() == (1,)


def test_tmws_db_upgrade_through_pgbouncer(pgbouncer: PgBouncer, bounced: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TMWS_")},
           "TMWS_DATABASE_URL": bounced, "TMWS_DATABASE_POOL_MODE": "transaction",
           "TMWS_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-m", "tmws", "db", "upgrade"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "database schema is current" in done.stdout
    refused = subprocess.run([sys.executable, "-m", "tmws", "db", "reindex"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "TMWS_DATABASE_DIRECT_URL" in refused.stderr, refused.stderr


async def test_reindex_needs_the_direct_url(pgbouncer: PgBouncer, bounced: str,
                                            database_url: str) -> None:
    """A concurrent index build under a session lock cannot go through the pooler: refused
    naming the variable, and run on the direct URL when it is set."""
    with pytest.raises(DatabaseError, match="TMWS_DATABASE_DIRECT_URL"):
        await reindex(bounced, pooled(pgbouncer, bounced))
    direct = urlsplit(database_url)._replace(path=urlsplit(bounced).path).geturl()
    report = await reindex(bounced, pooled(pgbouncer, bounced, database_direct_url=direct))
    assert report.action == "nothing to do"  # an empty table: measured only


async def test_reembed_needs_the_direct_url(pgbouncer: PgBouncer, bounced: str,
                                            database_url: str) -> None:
    direct = urlsplit(database_url)._replace(path=urlsplit(bounced).path).geturl()
    for settings in (pooled(pgbouncer, bounced),
                     pooled(pgbouncer, bounced, database_direct_url=direct)):
        database = Database(bounced, settings)
        await database.open()
        try:
            store = MemoryStore(database, HashProvider(settings.embedding_dim))
            await store.store("reembed", "a memory to embed again")
            if settings.database_direct_url is None:
                with pytest.raises(DatabaseError, match="TMWS_DATABASE_DIRECT_URL"):
                    await reembed(database, settings, HashProvider(settings.embedding_dim))
            else:
                assert await reembed(database, settings,
                                     HashProvider(settings.embedding_dim)) == 2
        finally:
            await database.close()


# --- memory, with more clients than server connections ---------------------------------------

async def test_memory_store_recall_and_list_with_shared_server_connections(
        pgbouncer: PgBouncer, bounced: str) -> None:
    """Three pools of four connections each (and their writers) over two server
    connections, 24 clients at once: every answer is the asking client's own."""
    settings = pooled(pgbouncer, bounced, db_max_connections="4")
    databases = [Database(bounced, settings) for _ in range(3)]
    for database in databases:
        await database.open()
    try:
        stores = [MemoryStore(d, HashProvider(settings.embedding_dim)) for d in databases]

        async def client(index: int) -> None:
            store = stores[index % len(stores)]
            namespace = f"client-{index}-{uuid.uuid4().hex[:6]}"
            for round_ in range(4):
                await store.store(namespace, f"client {index} note {round_} about topic{index}",
                                  tags=[f"t{index}"], importance=0.9)
                found = await store.search(namespace, f"topic{index} note {round_}")
                assert found and all(m.namespace == namespace for m in found)
                assert f"note {round_} " in found[0].content
                similar = await store.similar(namespace, f"client {index} note {round_}")
                assert {m.namespace for m in similar} == {namespace}
                listed = await store.recent(namespace, limit=50)
                assert len(listed) == round_ + 1
                assert [m.id for m in await store.by_importance(namespace)] \
                    == [m.id for m in listed]
                one = await store.get(namespace, listed[0].id)
                assert one is not None and one.content == listed[0].content

        await asyncio.gather(*(client(i) for i in range(24)))
        pools = [p for p in pgbouncer.show("POOLS") if p["database"] == urlsplit(bounced).path[1:]]
        servers = sum(int(str(p[k])) for p in pools for k in ("sv_active", "sv_idle", "sv_used"))
        assert servers <= DEFAULT_POOL_SIZE < sum(d.pool_stats()["size"] for d in databases)
    finally:
        for database in databases:
            await database.close()


async def test_vector_knobs_and_statement_timeout_apply_per_transaction(
        pgbouncer: PgBouncer, bounced: str) -> None:
    """Each pool's own settings hold for each of its statements, whichever server
    connection runs it, and none is left on the server connections afterwards."""
    ivfflat = Database(bounced, pooled(pgbouncer, bounced, vector_probes="3",
                                       db_statement_timeout="1234"))
    hnsw = Database(bounced, pooled(pgbouncer, bounced, vector_index="hnsw",
                                    hnsw_ef_search="77", db_statement_timeout="4321"))
    await ivfflat.open()
    await hnsw.open()
    try:
        async def probe(database: Database) -> dict[str, object]:
            rows = await database.fetch(
                "SELECT current_setting('ivfflat.probes', true) AS probes,"
                " current_setting('hnsw.ef_search', true) AS ef_search,"
                " current_setting('hnsw.iterative_scan', true) AS iterative,"
                " current_setting('statement_timeout') AS timeout")
            return rows[0]

        answers = await asyncio.gather(*(probe(d) for _ in range(20) for d in (ivfflat, hnsw)))
        for index, answer in enumerate(answers):
            if index % 2 == 0:
                assert (answer["probes"], answer["timeout"]) == ("3", "1234ms"), answer
            else:
                assert (answer["ef_search"], answer["iterative"], answer["timeout"]) \
                    == ("77", "strict_order", "4321ms"), answer
        assert (await ivfflat.fetch("SHOW ivfflat.probes"))[0]["ivfflat.probes"] == "3"
        with pytest.raises(DatabaseError, match="TMWS_DB_STATEMENT_TIMEOUT"):
            await ivfflat.fetch("SELECT pg_sleep(2)")
    finally:
        await ivfflat.close()
        await hnsw.close()
    # A client without tmws's settings, on the same server connections: the defaults.
    async with await psycopg.AsyncConnection.connect(bounced, autocommit=True) as plain:
        for _ in range(2 * DEFAULT_POOL_SIZE):
            cursor = await plain.execute(
                "SELECT current_setting('ivfflat.probes', true),"
                " current_setting('hnsw.ef_search', true), current_setting('statement_timeout')")
            probes, ef_search, timeout = await cursor.fetchone() or (None, None, None)
            assert probes in (None, "", "1") and ef_search in (None, "", "40"), (probes,
                                                                                ef_search)
            assert timeout == "0"


# --- pattern sync ----------------------------------------------------------------------------

@pytest.mark.parametrize("listen", [False, True], ids=["poll", "direct-listen"])
async def test_pattern_changes_reach_every_instance(pgbouncer: PgBouncer, bounced: str,
                                                    database_url: str, listen: bool) -> None:
    """No LISTEN through the pooler: the other instance polls (or, with the direct URL,
    listens there), and the change is acknowledged once it runs there."""
    direct = urlsplit(database_url)._replace(path=urlsplit(bounced).path).geturl()
    settings = pooled(pgbouncer, bounced, **({"database_direct_url": direct} if listen else {}))
    async with await create_pattern_execution_engine(settings) as first, \
            await create_pattern_execution_engine(settings) as second:
        change = await first.register_pattern(PatternDefinition(
            name="deploy_status", pattern_type=PatternType.INFRASTRUCTURE,
            trigger_pattern=r"\bdeploy\s+status\b", priority=50, cost_tokens=5))
        assert change.propagation.visible_everywhere, change.propagation
        assert change.propagation.instances == 2
        assert "deploy_status" in second.registry
        routed = await second.execute("what is the deploy status")
        assert routed.pattern_name == "deploy_status"
        removed = await second.unregister_pattern("deploy_status")
        assert removed.propagation.visible_everywhere
        assert "deploy_status" not in first.registry
        assert first.get_stats()["registry_stats"]["sync"]["errors"] == 0
