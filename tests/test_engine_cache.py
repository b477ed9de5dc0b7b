"""The engine's result caching across tiers and instances, against real Redis servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
import redis

from tests.conftest import PrivateRedis, make_settings
from tmws import PatternDefinition, PatternExecutionEngine, PatternType
from tmws.cache import CacheManager
from tmws.engine import create_pattern_execution_engine
from tmws.handlers import HandlerContext

pytestmark = pytest.mark.redis_topologies


@pytest.fixture
async def two_instances(database_url: str, redis_url: str
                        ) -> AsyncIterator[tuple[PatternExecutionEngine, PatternExecutionEngine]]:
    settings = make_settings(database_url, redis_url=redis_url)
    first = await create_pattern_execution_engine(settings)
    second = await create_pattern_execution_engine(settings)
    yield first, second
    await first.close()
    await second.close()


async def test_second_instance_hits_redis_then_its_own_memory(
        two_instances: tuple[PatternExecutionEngine, PatternExecutionEngine],
        namespace: str) -> None:
    first, second = two_instances
    ctx = {"namespace": namespace}
    computed = await first.execute("run tool vector_search", context=ctx)
    assert not computed.cache_hit
    shared = await second.execute("run tool vector_search", context=ctx)
    assert shared.cache_hit and shared.metadata["cache_tier"] == "redis"
    assert shared.result == computed.result and shared.tokens_used == 0
    local = await second.execute("RUN  tool vector_search", context=ctx)
    assert local.cache_hit and local.metadata["cache_tier"] == "local"
    stats = second.get_stats()["cache_stats"]
    assert stats["redis"]["hits"] == 1 and stats["local"]["hits"] == 1


async def test_a_write_on_one_instance_is_seen_by_the_other(
        two_instances: tuple[PatternExecutionEngine, PatternExecutionEngine],
        namespace: str) -> None:
    first, second = two_instances
    ctx = {"namespace": namespace}
    assert (await first.execute("recall memories about rollbacks", context=ctx)
            ).result["count"] == 0
    cached = await second.execute("recall memories about rollbacks", context=ctx)
    assert cached.cache_hit and cached.result["count"] == 0
    assert (await first.execute("remember rollbacks need a feature flag", context=ctx)).success
    fresh = await second.execute("recall memories about rollbacks", context=ctx)
    assert not fresh.cache_hit
    assert [m["content"] for m in fresh.result["memories"]] == \
        ["rollbacks need a feature flag"]


async def test_concurrent_identical_misses_run_once(database_url: str) -> None:
    calls = 0

    async def slow(ctx: HandlerContext) -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return {"answer": 42}

    async with await create_pattern_execution_engine(
            make_settings(database_url), handlers={"slow": slow}) as engine:
        engine.registry.register(PatternDefinition(
            name="slow_answer", pattern_type=PatternType.INFRASTRUCTURE,
            trigger_pattern=r"\bdeep thought\b", priority=100, handler="slow", cost_tokens=7))
        results = await asyncio.gather(*(engine.execute("ask deep thought") for _ in range(5)))
        assert calls == 1
        assert all(r.success and r.result == {"answer": 42} for r in results)
        assert sum(r.tokens_used for r in results) == 7  # paid once
        assert engine.get_stats()["cache_stats"]["singleflight_joins"] == 4
        assert (await engine.execute("ask deep thought")).cache_hit


async def test_redis_outage_never_fails_a_request(database_url: str,
                                                  private_redis: PrivateRedis,
                                                  namespace: str) -> None:
    settings = make_settings(database_url, redis_url=private_redis.url, redis_timeout="0.2",
                             cache_breaker_failures="2", cache_breaker_reset="0.5")
    ctx = {"namespace": namespace}
    async with await create_pattern_execution_engine(settings) as engine:
        await engine.execute("run tool vector_search", context=ctx)
        await engine.execute("remember outages teach humility", context=ctx)
        private_redis.stop()
        tool = await engine.execute("run tool vector_search", context=ctx)
        assert tool.success and tool.cache_hit  # L1
        for _ in range(2):  # memory results bypass every cache: other writers are unseen
            recall = await engine.execute("recall memories about outages", context=ctx)
            assert recall.success and not recall.cache_hit
            assert recall.result["count"] == 1
        assert (await engine.execute("remember redis was down", context=ctx)).success
        health = await engine.execute("check health", use_cache=False)
        assert not health.success and health.result["cache"]["status"] == "degraded"
        assert engine.get_stats()["cache_stats"]["redis"]["circuit"] in ("open", "half_open")

        private_redis.start()
        await asyncio.sleep(0.6)
        healthy = await engine.execute("check health", use_cache=False)
        assert healthy.success, healthy.error
        await engine.execute("recall memories about outages", context=ctx)
        again = await engine.execute("recall memories about outages", context=ctx)
        assert again.cache_hit  # cached again once Redis is back


async def test_oversized_results_are_not_cached(database_url: str) -> None:
    settings = make_settings(database_url, cache_max_value_bytes="64")
    async with await create_pattern_execution_engine(settings) as engine:
        await engine.execute("run tool vector_search")
        second = await engine.execute("run tool vector_search")
        assert not second.cache_hit
        assert engine.get_stats()["cache_stats"]["oversize_skipped"] == 2


async def _eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_pattern_changes_reach_every_instance(database_url: str) -> None:
    """Through the database, with or without Redis: the change is stored as the group's
    next version before it is acknowledged, and acknowledged once both instances run it."""
    settings = make_settings(database_url)
    async with await create_pattern_execution_engine(settings) as first, \
            await create_pattern_execution_engine(settings) as second:
        assert first.registry.shared_version == second.registry.shared_version == 1
        await second.execute("run tool vector_search")
        assert (await second.execute("run tool vector_search")).cache_hit
        change = await first.register_pattern(PatternDefinition(
            name="deploy_status", pattern_type=PatternType.INFRASTRUCTURE,
            trigger_pattern=r"\bdeploy\s+status\b", priority=50, cost_tokens=5))
        assert change.propagation.visible_everywhere
        assert (change.propagation.version, change.propagation.instances) == (2, 2)
        assert "deploy_status" in second.registry  # acknowledged means installed there too
        assert second.registry.fingerprint == first.registry.fingerprint
        routed = await second.execute("what is the deploy status")
        assert routed.pattern_name == "deploy_status"
        # execute_mcp_tool did not change: its cached result is still good everywhere.
        assert (await second.execute("run tool vector_search")).cache_hit
        removed = await second.unregister_pattern("deploy_status")
        assert removed.propagation.visible_everywhere
        assert "deploy_status" not in first.registry
        assert second.get_stats()["registry_stats"]["sync"]["applied"] == 1
        assert first.get_stats()["registry_stats"]["sync"]["changes"] == 1

        reload = await second.reload_patterns()  # from the file: back to the shipped set
        assert reload.propagation.visible_everywhere and reload.propagation.version == 4
        assert first.registry.fingerprint == second.registry.fingerprint
        assert len(first.registry) == reload.patterns


async def test_a_pattern_change_drops_only_the_results_it_affects(database_url: str,
                                                                  namespace: str) -> None:
    """Routing runs before the cache lookup and keys carry the routed pattern's definition:
    a query a new pattern takes is answered by it, a changed pattern's results are
    recomputed, every other cached result survives (no miss storm after each change)."""
    ctx = {"namespace": namespace}
    async with await create_pattern_execution_engine(make_settings(database_url)) as engine:
        first_tool = await engine.execute("run tool vector_search", context=ctx)
        await engine.execute("check redis health", context=ctx)
        await engine.execute("recall memories about rollbacks", context=ctx)

        await engine.register_pattern(PatternDefinition(
            name="vector_tools", pattern_type=PatternType.INFRASTRUCTURE,
            trigger_pattern=r"\brun\s+tool\s+vector", priority=99, cost_tokens=7))
        taken = await engine.execute("run tool vector_search", context=ctx)
        assert (taken.pattern_name, taken.cache_hit) == ("vector_tools", False)
        assert first_tool.pattern_name == "execute_mcp_tool"
        assert (await engine.execute("check redis health", context=ctx)).cache_hit
        assert (await engine.execute("recall memories about rollbacks", context=ctx)).cache_hit

        health = engine.registry.get("health_check")
        assert health is not None
        await engine.register_pattern(
            msgspec.structs.replace(health, cost_tokens=health.cost_tokens + 1), replace=True)
        changed = await engine.execute("check redis health", context=ctx)
        assert not changed.cache_hit and changed.tokens_used == health.cost_tokens + 1

        await engine.unregister_pattern("vector_tools")
        back = await engine.execute("run tool vector_search", context=ctx)
        assert back.pattern_name == "execute_mcp_tool" and back.cache_hit  # as it was
        assert (await engine.execute("recall memories about rollbacks", context=ctx)).cache_hit



def _result_ttls(url: str) -> list[int]:
    """Milliseconds left of every cached result in this Redis."""
    client = redis.Redis.from_url(url)
    try:
        return [int(client.pttl(key)) for key in client.scan_iter("tmws:r:*")]
    finally:
        client.close()


async def test_tmws_cache_ttl_and_max_size_scale_the_pattern_files_figures(
        database_url: str, private_redis: PrivateRedis, namespace: str) -> None:
    # health_check declares cache_ttl 60; infrastructure's cache_config max_size is 500.
    settings = make_settings(database_url, redis_url=private_redis.url, cache_ttl="900",
                             cache_max_size="3000")
    async with await create_pattern_execution_engine(settings) as engine:
        assert (await engine.execute("check health", context={"namespace": namespace})).success
        [left] = _result_ttls(private_redis.url)
        assert 60_000 < left <= 180_000  # 60 s x 900/300
        assert engine.cache.local._caches["infrastructure"].max_size == 1500
        assert engine.cache.local._caches["memory"].max_size == 3000


async def test_the_guides_cache_manager_drives_the_engine(
        database_url: str, private_redis: PrivateRedis, namespace: str) -> None:
    cache = CacheManager(redis_url=private_redis.url, local_ttl=120, redis_ttl=600,
                         max_local_size=2000)
    # TMWS_CACHE_TTL says otherwise: the cache given wins for this engine.
    settings = make_settings(database_url, cache_ttl="30", cache_max_size="10")
    async with await create_pattern_execution_engine(settings, cache=cache) as engine:
        assert engine.cache is cache and engine.cache_manager is cache
        # The pattern file's per-type sizes, scaled by max_local_size / 1000.
        assert [cache.local._caches[t].max_size for t in ("infrastructure", "memory",
                                                           "hybrid")] == [1000, 2000, 400]
        query = "run tool lint"  # execute_mcp_tool: cache_ttl 300
        assert not (await engine.execute(query, context={"namespace": namespace})).cache_hit
        [left] = _result_ttls(private_redis.url)
        assert 300_000 < left <= 600_000
        again = await engine.execute(query, context={"namespace": namespace})
        assert again.cache_hit and again.metadata["cache_tier"] == "local"
    # The engine did not close a cache it was given: it still answers.
    assert (await cache.ping()).state == "ok"
    async with await create_pattern_execution_engine(settings, cache_manager=cache) as engine:
        hit = await engine.execute(query, context={"namespace": namespace})
        assert hit.cache_hit and hit.metadata["cache_tier"] == "redis"
    await cache.close()
