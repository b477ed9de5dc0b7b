"""Read replicas against a real streaming replica (tests/fix_replica.py): where reads run,
read-your-writes per namespace (in one worker and across two), a replica down or lagging,
and what stats, health and metrics say about it."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from tests.conftest import make_settings
from tests.fix_replica import Replication
from tests.loopback import free_port
from tmws.config import Settings
from tmws.database import ReplicatedDatabase, service_database
from tmws.database._replicas import LsnHistory, Replica, format_lsn, parse_lsn
from tmws.embeddings import HashProvider
from tmws.engine import create_pattern_execution_engine
from tmws.errors import ConfigError
from tmws.memory import MemoryStore
from tmws.metrics import exposition

# Where a read ran, asked of the server that ran it.
ON_WHICH = "SELECT pg_is_in_recovery() AS standby"


def new_namespace() -> str:
    return f"rep-{uuid.uuid4().hex[:12]}"


async def own(store: MemoryStore, namespace: str) -> list[str]:
    """The contents of the namespace's own memories, newest first."""
    return [m.content for m in await store.recent(namespace) if m.namespace == namespace]


@asynccontextmanager
async def replicated(replication: Replication, *, replicas: str | None = None,
                     **overrides: str) -> AsyncIterator[tuple[MemoryStore, ReplicatedDatabase]]:
    """A MemoryStore over the primary with the replica (or ``replicas``) configured: one
    worker's view."""
    settings = make_settings(replication.primary_url,
                             database_replica_urls=replicas or replication.replica_url,
                             **overrides)
    database = service_database(replication.primary_url, settings)
    assert isinstance(database, ReplicatedDatabase)
    await database.open()
    try:
        yield MemoryStore(database, HashProvider(settings.embedding_dim)), database
    finally:
        await database.close()


async def eventually(check: Callable[[], bool], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within:g} s")
        await asyncio.sleep(0.05)


async def on_standby(database: ReplicatedDatabase, namespace: str) -> bool:
    """Whether a read of ``namespace`` runs on the replica right now."""
    rows = await database.read(namespace, ON_WHICH)
    return bool(rows[0]["standby"])


async def replica_serving(database: ReplicatedDatabase) -> None:
    await eventually(lambda: database.replicas[0].usable(database.max_lag),
                     "the replica serving reads")


@asynccontextmanager
async def replay_paused(replication: Replication) -> AsyncIterator[None]:
    replication.on_replica("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        replication.on_replica("SELECT pg_wal_replay_resume()")


# --- routing ------------------------------------------------------------------------------

async def test_reads_run_on_the_replica(replication: Replication) -> None:
    async with replicated(replication) as (store, database):
        await replica_serving(database)
        namespace = new_namespace()
        assert await on_standby(database, namespace)
        async with replay_paused(replication):
            # Written behind tmws's back (no fence): the paused replica lacks it, so a read
            # that does not see it was answered by the replica.
            replication.on_primary("INSERT INTO memories (namespace, content) VALUES (%s, %s)",
                                   (namespace, "written straight into the primary"))
            assert await own(store, namespace) == []
            assert await store.count(namespace) == 0
        replication.wait_caught_up()
        await eventually(lambda: database.replicas[0].state == "ok", "replica caught up")
        assert await own(store, namespace) == ["written straight into the primary"]
        stats = database.pool_stats()
        assert stats["reads"]["replica"] >= 4 and stats["replicas"][0]["reads"] >= 4


async def test_a_namespace_reads_its_own_writes_while_the_replica_is_behind(
        replication: Replication) -> None:
    async with replicated(replication, database_replica_max_lag="600") as (store, database):
        await replica_serving(database)
        writer, other, sharer = new_namespace(), new_namespace(), new_namespace()
        async with replay_paused(replication):
            memory_id = await store.store(writer, "rotate the signing keys on friday",
                                          tags=["keys"])
            # At once, every kind of read of the writer's namespace sees it: the primary
            # answers them, the replica having replayed none of it.
            got = await store.get(writer, memory_id)
            assert got is not None and got.content == "rotate the signing keys on friday"
            assert await own(store, writer) == ["rotate the signing keys on friday"]
            assert [m.id for m in await store.search(writer, "signing keys")
                    if m.namespace == writer] == [memory_id]
            assert [m.id for m in await store.by_tag(writer, ["keys"])] == [memory_id]
            assert await store.count(writer) == 1
            assert not await on_standby(database, writer)
            # Other namespaces still read from the replica ...
            assert await on_standby(database, other)
            # ... until a shared memory is written, which every namespace reads.
            shared_id = await store.store(sharer, "shared runbook", visibility="shared")
            assert not await on_standby(database, other)
            assert shared_id in [m.id for m in await store.recent(other)]
            assert database.replicas[0].usable(database.max_lag)  # skipped by fence only
            assert await store.delete(sharer, shared_id)  # other tests read shared memories
        # Once the replica has replayed the writes, the namespace reads from it again.
        await eventually(lambda: database.replicas[0].replayed is not None
                         and database.pool_stats()["replicas"][0]["state"] == "ok",
                         "replica polled")
        deadline = time.monotonic() + 60
        while not await on_standby(database, writer):
            assert time.monotonic() < deadline, "the writer's reads never returned to the replica"
            await asyncio.sleep(0.05)
        assert (await store.get(writer, memory_id)) is not None


async def test_read_your_writes_holds_across_workers(replication: Replication) -> None:
    """A write acknowledged by one worker is read by another at once (the fence is kept on
    the primary), and so is a delete."""
    async with (replicated(replication, database_replica_max_lag="600") as (one, one_db),
                replicated(replication, database_replica_max_lag="600") as (two, two_db)):
        await replica_serving(one_db)
        await replica_serving(two_db)
        namespace = new_namespace()
        async with replay_paused(replication):
            memory_id = await one.store(namespace, "the deploy freeze starts monday")
            got = await two.get(namespace, memory_id)
            assert got is not None and got.content == "the deploy freeze starts monday"
            assert await own(two, namespace) == ["the deploy freeze starts monday"]
            assert not await on_standby(two_db, namespace)
            assert await on_standby(two_db, new_namespace())
            assert await one.delete(namespace, memory_id)
            assert await two.get(namespace, memory_id) is None


# --- a replica down or behind ---------------------------------------------------------------

async def test_a_stopped_replica_falls_back_to_the_primary_and_recovers(
        replication: Replication) -> None:
    async with replicated(replication) as (store, database):
        await replica_serving(database)
        namespace = new_namespace()
        memory_id = await store.store(namespace, "pager rotation lives in the wiki")
        replication.stop_replica()
        try:
            # No error: the read the replica fails runs again on the primary.
            for _ in range(3):
                got = await store.get(namespace, memory_id)
                assert got is not None
                assert not await on_standby(database, new_namespace())
            await eventually(lambda: database.pool_stats()["replicas"][0]["state"] == "down",
                             "the replica reported down")
            report = database.pool_stats()["replicas"][0]
            assert report["usable"] is False and report["error"]
            assert await own(store, namespace) == ["pager rotation lives in the wiki"]
        finally:
            replication.start_replica()
        await replica_serving(database)
        assert await on_standby(database, new_namespace())
        assert (await store.get(namespace, memory_id)) is not None


async def test_a_replica_lagging_past_the_bound_is_skipped(replication: Replication) -> None:
    async with replicated(replication, database_replica_max_lag="0.5") as (store, database):
        await replica_serving(database)
        namespace = new_namespace()
        async with replay_paused(replication):
            # Any write moves the primary on; the paused replica falls behind by the clock.
            replication.on_primary("INSERT INTO memories (namespace, content) VALUES (%s, %s)",
                                   (namespace, "written while the replica is paused"))
            await eventually(lambda: database.replicas[0].state == "lagging",
                             "the replica reported lagging")
            report = database.pool_stats()["replicas"][0]
            assert report["usable"] is False and report["lag_seconds"] > 0.5
            # Unfenced, this row is only on the primary: seeing it proves where reads ran.
            assert await own(store, namespace) == ["written while the replica is paused"]
            assert not await on_standby(database, new_namespace())
        await replica_serving(database)
        assert await on_standby(database, new_namespace())


async def test_a_replica_down_at_start_does_not_stop_start_up(replication: Replication) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/tmws"
    async with replicated(replication, replicas=nowhere, db_pool_timeout="2") as (store,
                                                                                   database):
        assert database.replicas[0].state == "down"
        namespace = new_namespace()
        memory_id = await store.store(namespace, "the primary answers alone")
        assert (await store.get(namespace, memory_id)) is not None
        assert not await on_standby(database, namespace)
        assert database.pool_stats()["reads"]["replica"] == 0


async def test_a_replica_url_that_is_no_standby_is_skipped(replication: Replication) -> None:
    # The primary under another spelling: reachable, but not in recovery.
    primary = replication.primary_url.replace("127.0.0.1", "localhost")
    async with replicated(replication, replicas=primary) as (_, database):
        assert database.replicas[0].state == "not_standby"
        assert not await on_standby(database, new_namespace())


# --- what it reports ------------------------------------------------------------------------

async def test_stats_health_and_metrics_report_the_replicas(replication: Replication) -> None:
    settings = make_settings(replication.primary_url,
                             database_replica_urls=replication.replica_url)
    async with await create_pattern_execution_engine(settings) as engine:
        database = engine.database
        assert isinstance(database, ReplicatedDatabase)
        await replica_serving(database)
        health = await engine.health()
        assert health.healthy
        [replica] = health.database.pool["replicas"]
        assert replica["name"] == "replica1" and replica["state"] == "ok"
        assert replica["usable"] is True and replica["lag_seconds"] is not None
        assert replication.replica_url not in str(health.to_builtins())
        stats = engine.get_stats()["database_stats"]
        assert stats["replicas"][0]["pool"]["max_size"] >= 1
        assert set(stats["reads"]) == {"primary", "replica"}
        scrape = exposition().decode()
        assert 'tmws_database_replica_usable{replica="replica1"} 1.0' in scrape
        assert 'tmws_database_replica_lag_seconds{replica="replica1"}' in scrape


# --- settings -------------------------------------------------------------------------------

PRIMARY = "postgresql://tmws:pw@db.example:5432/tmws"


@pytest.mark.parametrize(("env", "variable", "says"), [
    ({"TMWS_DATABASE_REPLICA_URLS": "mysql://u:hunter2@r1/tmws"},
     "TMWS_DATABASE_REPLICA_URLS", "entry 1 must be a postgresql://"),
    ({"TMWS_DATABASE_REPLICA_URLS": "postgresql://r1/tmws, redis://u:hunter2@r2"},
     "TMWS_DATABASE_REPLICA_URLS", "entry 2"),
    ({"TMWS_DATABASE_REPLICA_URLS": "postgresql://u:hunter2@r1/t,postgresql://u:hunter2@r1/t"},
     "TMWS_DATABASE_REPLICA_URLS", "same replica twice"),
    ({"TMWS_DATABASE_REPLICA_URLS": PRIMARY}, "TMWS_DATABASE_REPLICA_URLS", "the primary"),
    ({"TMWS_DATABASE_REPLICA_MAX_LAG": "0"}, "TMWS_DATABASE_REPLICA_MAX_LAG", "more than 0"),
    ({"TMWS_DATABASE_REPLICA_MAX_LAG": "soon"}, "TMWS_DATABASE_REPLICA_MAX_LAG", "invalid"),
])
def test_replica_settings_are_checked_naming_the_variable(
        env: dict[str, str], variable: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TMWS_DATABASE_URL": PRIMARY, **env})
    assert caught.value.variable == variable
    assert says in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_replicas_need_an_external_primary() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"TMWS_DATABASE_REPLICA_URLS": "postgresql://u:hunter2@r1/tmws"})
    assert caught.value.variable == "TMWS_DATABASE_REPLICA_URLS"
    assert "TMWS_DATABASE_URL" in str(caught.value) and "hunter2" not in str(caught.value)


def test_replica_settings_defaults_and_parsing() -> None:
    defaults = Settings.from_env({})
    assert defaults.replica_urls == () and defaults.database_replica_max_lag == 5.0
    settings = Settings.from_env({
        "TMWS_DATABASE_URL": PRIMARY,
        "TMWS_DATABASE_REPLICA_URLS": " postgresql://r1/tmws , postgres://r2/tmws ,",
        "TMWS_DATABASE_REPLICA_MAX_LAG": "2.5"})
    assert settings.replica_urls == ("postgresql://r1/tmws", "postgres://r2/tmws")
    assert settings.database_replica_max_lag == 2.5
    assert not isinstance(service_database(PRIMARY, defaults), ReplicatedDatabase)


# --- pure logic -----------------------------------------------------------------------------

def test_lsn_text_round_trips() -> None:
    assert parse_lsn("0/0") == 0
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")


def test_lag_is_the_age_of_the_newest_primary_position_replayed() -> None:
    history = LsnHistory(keep=10)
    assert history.lag(100, now=50.0, since_replay=None) == math.inf  # nothing known
    assert history.lag(100, now=50.0, since_replay=3.0) == 3.0
    for at, lsn in ((40.0, 100), (41.0, 200), (42.0, 200), (43.0, 300)):
        history.add(at, lsn)
    assert history.lag(300, now=43.5, since_replay=900.0) == 0.5  # caught up: clock ignored
    assert history.lag(250, now=43.5, since_replay=0.0) == 1.5  # has what 42.0 had
    assert history.lag(100, now=43.5, since_replay=0.0) == 3.5
    # Behind every sample: at least the oldest's age, or the replay clock if larger.
    assert history.lag(50, now=43.5, since_replay=1.0) == 3.5
    assert history.lag(50, now=43.5, since_replay=60.0) == 60.0
    history.add(60.0, 400)  # samples older than `keep` go: behind the one left
    assert history.lag(300, now=60.5, since_replay=0.0) == 0.5
    assert history.lag(350, now=60.5, since_replay=5.0) == 5.0


def test_a_fence_is_covered_by_position_or_by_time() -> None:
    settings = Settings.from_env({})
    replica = Replica(1, "postgresql://nowhere/tmws", settings)
    assert not replica.covers(10, recorded_at=0.0)  # never polled: covers nothing
    replica.replayed, replica.polled_at, replica.lag = 500, 100.0, 2.0
    assert replica.covers(500, recorded_at=99.5)  # replayed past it
    assert not replica.covers(501, recorded_at=99.5)  # not yet, and too recent
    assert replica.covers(1 << 64, recorded_at=97.5)  # unknown position, but long enough ago
    assert not replica.covers(1 << 64, recorded_at=98.5)
