"""The Python calls of the original service's operations and API documentation, as written
there (the `src.services.pattern_execution_service` names are `tmws`'s; README, From Python,
and deploy/README.md, The guide, chapter by chapter, say where each lands)."""

from __future__ import annotations

import uuid

import pytest

from tmws import ExecutionMode, PatternDefinition, Settings, create_pattern_execution_engine
from tmws.cache import CacheManager


@pytest.fixture
def guide_environment(database_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
                      ) -> None:
    """Step 3's .env (deploy/env.example), as far as it concerns the Python API."""
    for name, value in {
        "TMWS_DATABASE_URL": database_url, "TMWS_REDIS_URL": redis_url,
        "TMWS_LOG_LEVEL": "info", "TMWS_CACHE_TTL": "300", "TMWS_CACHE_MAX_SIZE": "1000",
        "TMWS_DB_MAX_CONNECTIONS": "4", "TMWS_DB_POOL_PRE_PING": "true",
        "TMWS_PATTERN_SYNC_GROUP": f"test-{uuid.uuid4().hex[:12]}",
        "TMWS_PATTERN_INFRA_TIMEOUT": "2000", "TMWS_PATTERN_MEMORY_TIMEOUT": "5000",
        "TMWS_PATTERN_HYBRID_TIMEOUT": "5000",
    }.items():
        monkeypatch.setenv(name, value)


async def test_the_guides_snippets(guide_environment: None) -> None:
    # Step 5 "Verify" and the health check.
    engine = await create_pattern_execution_engine()
    try:
        result = await engine.execute('check health')
        print(f'Pattern service operational: {result.success}')
        assert result.success
        # Troubleshooting, "Cache Misses".
        await engine.execute('check health')
        stats = engine.get_stats()
        print(f"Cache hit rate: {stats['cache_hit_rate']:.1f}%")
        assert stats["cache_hit_rate"] == 50.0
        # "Connection Pooling": the original setting names, read-only here.
        settings = Settings.from_env()
        assert settings.database_pool_size == 4 and settings.database_pool_pre_ping
        assert settings.database_max_overflow == settings.database_pool_size // 2
        assert settings.database_pool_recycle == 3600
    finally:
        await engine.close()


async def test_the_guides_cache_tuning(guide_environment: None, redis_url: str) -> None:
    settings = Settings.from_env()
    cache_manager = CacheManager(
        redis_url=settings.redis_url,
        local_ttl=120,       # 2 minute local cache
        redis_ttl=600,       # 10 minute Redis cache
        max_local_size=2000  # Larger local cache
    )
    await cache_manager.initialize()
    # The original factory took the cache manager as its (only) argument.
    engine = await create_pattern_execution_engine(cache_manager)
    try:
        assert engine.cache_manager is cache_manager
        assert engine.get_stats()["cache_stats"]["tuning"]["ttl_scale"] == 2.0
    finally:
        await engine.close()
        await cache_manager.close()


async def test_the_original_api_documentation(guide_environment: None) -> None:
    engine = await create_pattern_execution_engine()
    try:
        result = await engine.execute("recall security patterns")
        print(f"Pattern: {result.pattern_name}")
        print(f"Success: {result.success}")
        print(f"Time: {result.execution_time_ms:.2f}ms")
        print(f"Tokens: {result.tokens_used}")
        assert result.success and result.pattern_name == "recall_memory"
        assert result.metadata["pattern_type"] == "memory" and result.cache_hit is False

        decision = await engine.router.route(
            "analyze security patterns",
            execution_mode=ExecutionMode.BALANCED
        )
        print(f"Route to: {decision.pattern_type}")
        print(f"Confidence: {decision.confidence:.1%}")
        print(f"Reasoning: {decision.reasoning}")
        assert decision.pattern_type == "hybrid" and decision.reasoning
        assert (await engine.router.route("analyze security patterns",
                                          ExecutionMode.BALANCED)) == decision
        fast = await engine.router.route("recall the outage", execution_mode="fast")
        assert fast.pattern_type == "infrastructure"
        with pytest.raises(TypeError, match="disagree"):
            await engine.router.route("x", ExecutionMode.FAST, execution_mode="balanced")
        with pytest.raises(ValueError, match="unknown execution mode 'hasty'"):
            await engine.router.route("x", execution_mode="hasty")

        found = await engine.execute(
            "find optimization patterns",
            execution_mode=ExecutionMode.BALANCED,
            context={"agent": "artemis", "priority": "high"}
        )
        assert found.success, found.error
        assert (await engine.execute("check health", use_cache=True)).success

        pattern = PatternDefinition.from_config({
            'name': 'custom_pattern',
            'pattern_type': 'memory',
            'trigger_pattern': r'custom\s+query',
            'cost_tokens': 100,
            'priority': 8
        })
        engine.registry.register(pattern)
        engine.registry.register_batch([PatternDefinition.from_config({
            'name': 'custom_batch', 'pattern_type': 'infrastructure',
            'trigger_pattern': r'custom\s+batch', 'cost_tokens': 10})])
        assert engine.registry.get("custom_pattern") is not None

        stats = engine.get_stats()
        print(f"Total executions: {stats['total_executions']}")
        print(f"Success rate: {stats['success_rate']:.1f}%")
        print(f"Cache hit rate: {stats['cache_hit_rate']:.1f}%")
        print(f"Average time: {stats['avg_execution_time_ms']:.2f}ms")
        for key in ("successful_executions", "failed_executions", "cache_hits",
                    "total_tokens_used"):
            assert key in stats
        assert stats["total_executions"] == 3
        assert stats["registry_stats"]["total_patterns"] >= 2
        assert 0.0 <= stats["registry_stats"]["cache_hit_rate"] <= 100.0
        routes = stats["router_stats"]
        assert routes["total_routes"] == sum(routes["routes_by_type"].values()) >= 3
        assert sum(routes["route_distribution"].values()) == pytest.approx(100.0)
    finally:
        await engine.close()
