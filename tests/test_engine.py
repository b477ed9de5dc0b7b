"""The engine end to end, against the real embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

import pytest

from tests.conftest import make_settings
from tmws import (
    ExecutionMode,
    PatternDefinition,
    PatternExecutionEngine,
    PatternType,
    create_pattern_execution_engine,
)
from tmws.database import EmbeddedPostgres, upgrade
from tmws.errors import InvalidRequestError
from tmws.handlers import HandlerContext


async def test_check_health_succeeds_on_a_healthy_install(engine: PatternExecutionEngine) -> None:
    result = await engine.execute("check health")
    assert result.success, result.error
    assert result.pattern_name == "health_check"
    assert result.result["healthy"] is True
    assert result.result["database"]["status"] == "ok"
    assert result.result["cache"]["redis"] == "not configured"
    assert result.tokens_used == 30
    assert result.execution_time_ms > 0


async def test_guide_snippet_shapes(engine: PatternExecutionEngine) -> None:
    result = await engine.execute("check health", execution_mode=ExecutionMode.BALANCED,
                                  context=None, use_cache=True)
    for field in ("pattern_name", "success", "result", "execution_time_ms", "tokens_used",
                  "cache_hit", "error", "metadata"):
        assert hasattr(result, field)
    decision = await engine.router.route("recall memories about auth", ExecutionMode.BALANCED,
                                         None)
    assert decision.pattern_type is PatternType.MEMORY
    assert decision.pattern_name == "recall_memory"
    assert decision.estimated_cost == 100
    assert 0 < decision.confidence <= 1 and decision.reasoning
    stats = engine.get_stats()
    for key in ("total_executions", "successful_executions", "failed_executions", "cache_hits",
                "avg_execution_time_ms", "total_tokens_used", "success_rate", "cache_hit_rate",
                "registry_stats", "router_stats"):
        assert key in stats
    assert stats["worker_pid"] == os.getpid()  # which worker answered /api/v1/stats
    print(f"Cache hit rate: {stats['cache_hit_rate']:.1f}%")


async def test_store_then_recall_in_a_namespace(engine: PatternExecutionEngine,
                                                namespace: str) -> None:
    ctx: dict[str, Any] = {"namespace": namespace}
    stored = await engine.execute("remember the auth service rotates JWT keys every Monday",
                                  context={**ctx, "tags": ["Auth", "security"],
                                           "importance": 0.9})
    assert stored.success, stored.error
    assert stored.pattern_name == "store_memory" and not stored.cache_hit
    memory_id = stored.result["id"]
    recalled = await engine.execute("recall memories about auth keys", context=ctx)
    assert recalled.success, recalled.error
    hits = recalled.result["memories"]
    assert [m["id"] for m in hits] == [memory_id]
    assert hits[0]["content"] == "the auth service rotates JWT keys every Monday"
    assert hits[0]["tags"] == ["auth", "security"]
    other = await engine.execute("recall memories about auth keys",
                                 context={"namespace": namespace + "-other"})
    assert other.success and other.result["memories"] == []


async def test_a_write_is_never_hidden_by_the_cache(engine: PatternExecutionEngine,
                                                    namespace: str) -> None:
    ctx = {"namespace": namespace}
    first = await engine.execute("recall memories about kafka", context=ctx)
    again = await engine.execute("recall memories about kafka", context=ctx)
    assert first.result["count"] == 0 and again.cache_hit
    await engine.execute("store kafka retention is seven days", context=ctx)
    after = await engine.execute("recall memories about kafka", context=ctx)
    assert not after.cache_hit
    assert after.result["count"] == 1


async def test_tag_importance_temporal_aggregate_compare(engine: PatternExecutionEngine,
                                                         namespace: str) -> None:
    ctx: dict[str, Any] = {"namespace": namespace}
    for text, tags, importance in [("redis failover drill went fine", ["ops"], 0.3),
                                   ("postgres vacuum settings tuned", ["ops", "db"], 0.95),
                                   ("security review of the login flow", ["security"], 0.8)]:
        done = await engine.execute(f"save {text}", context={**ctx, "tags": tags,
                                                             "importance": importance})
        assert done.success, done.error
    tagged = await engine.execute("find memories tagged with ops", context=ctx)
    assert tagged.pattern_name == "search_by_tag" and tagged.result["count"] == 2
    assert tagged.result["memories"][0]["importance"] == pytest.approx(0.95)
    important = await engine.execute("list important memories", context=ctx)
    assert important.pattern_name == "filter_by_importance"
    assert [m["importance"] for m in important.result["memories"]] == pytest.approx([0.95, 0.8])
    recent = await engine.execute("show recent notes", context=ctx)
    assert recent.pattern_name == "temporal_analysis"
    assert recent.result["memories"][0]["content"] == "security review of the login flow"
    summary = await engine.execute("summarize all memories", context=ctx)
    assert summary.pattern_name == "aggregate_insights"
    assert summary.result["total"] == 3
    assert summary.result["top_tags"][0] == {"tag": "ops", "count": 2}
    compared = await engine.execute("compare redis with postgres", context=ctx)
    assert compared.pattern_name == "compare_patterns", compared.error
    assert compared.result["left"]["memories"][0]["content"].startswith("redis")
    assert compared.result["right"]["memories"][0]["content"].startswith("postgres")


async def test_fast_mode_only_considers_infrastructure(engine: PatternExecutionEngine) -> None:
    result = await engine.execute("recall memories about auth", ExecutionMode.FAST)
    assert result.pattern_name is None or result.pattern_name != "recall_memory"
    decision = result.metadata["routing"]
    assert decision["pattern_type"] == "infrastructure"
    health = await engine.execute("check health", "fast")
    assert health.success
    assert health.result["database"]["status"] == "not_probed"


async def test_comprehensive_runs_handler_and_retrieval(engine: PatternExecutionEngine,
                                                        namespace: str) -> None:
    ctx = {"namespace": namespace}
    await engine.execute("remember grafana dashboards live in the ops folder", context=ctx)
    result = await engine.execute("check health of grafana", ExecutionMode.COMPREHENSIVE,
                                  context=ctx)
    assert result.success, result.error
    assert result.result["handler"]["healthy"] is True
    related = result.result["related_memories"]
    assert related and "grafana" in related[0]["content"]


@pytest.mark.parametrize("query", [
    # The "call the summarizer function with …" fires the tool trigger now.
    "pass the last message to the summarizer function",
    "analyze why latency spiked in the api",
    "anything in memory on rollbacks please",
])
async def test_no_trigger_still_runs_a_pattern_never_a_type(
        engine: PatternExecutionEngine, namespace: str, query: str) -> None:
    assert engine.router.match(query, ExecutionMode.BALANCED) is None
    result = await engine.execute(query, context={"namespace": namespace})
    assert result.success, result.error
    routing = result.metadata["routing"]
    assert routing["decided_by"] in ("examples", "keywords")
    assert result.pattern_name is not None and routing["pattern_name"] == result.pattern_name
    pattern = engine.registry.get(result.pattern_name)
    assert pattern is not None and pattern.pattern_type.value == routing["pattern_type"]


async def test_a_write_trigger_on_an_everyday_request_stores_nothing(
        engine: PatternExecutionEngine, namespace: str) -> None:
    query = "remember to pick up the dry cleaning on thursday"
    fired = engine.router.match(query, ExecutionMode.BALANCED)
    assert fired is not None and fired.name == "store_memory"
    for _ in range(2):  # and nothing cached makes the second one run it
        result = await engine.execute(query, context={"namespace": namespace})
        assert not result.success and result.error_code == "no_pattern_matched"
        assert result.metadata["routing"]["decided_by"] == "none"
    assert await engine.memory.count(namespace) == 0


async def test_a_misspelled_write_trigger_stores_the_text_after_it(
        engine: PatternExecutionEngine, namespace: str) -> None:
    result = await engine.execute("stroe the kafka retention is seven days",
                                  context={"namespace": namespace})
    assert result.success and result.pattern_name == "store_memory", result.error
    assert result.metadata["routing"]["decided_by"] == "trigger"
    recalled = await engine.execute("recall memories about kafka retention",
                                    context={"namespace": namespace})
    assert [m["content"] for m in recalled.result["memories"]] == [
        "the kafka retention is seven days"]


async def test_nothing_fits_gives_nearest_candidates(engine: PatternExecutionEngine) -> None:
    result = await engine.execute("what is the weather in paris tomorrow")
    assert not result.success
    assert result.error is not None and result.error.startswith("no pattern matched")
    assert result.metadata["routing"]["decided_by"] == "none"


async def test_tool_pattern_returns_the_decision(engine: PatternExecutionEngine) -> None:
    result = await engine.execute("run tool vector_search with k=5")
    assert result.success
    assert result.result["action"] == "delegate"
    assert result.result["pattern"] == "execute_mcp_tool"


async def test_cache_hits_are_counted_and_bypassable(engine: PatternExecutionEngine) -> None:
    first = await engine.execute("count active connections")
    second = await engine.execute("Count   ACTIVE connections")
    bypass = await engine.execute("count active connections", use_cache=False)
    assert not first.cache_hit and second.cache_hit and not bypass.cache_hit
    assert second.tokens_used == 0 and first.tokens_used == 35
    stats = engine.get_stats()
    assert stats["cache_hits"] == 1
    assert stats["tokens_saved"] == 35
    assert stats["cache_hit_rate"] == pytest.approx(100 / 3, abs=0.01)


async def test_statistics_queries_report_engine_counters(engine: PatternExecutionEngine) -> None:
    await engine.execute("check health")
    stats = await engine.execute("show engine statistics")
    assert stats.success and stats.result["total_executions"] == 1
    tokens = await engine.execute("compute token usage", use_cache=False)
    assert tokens.result["subject"] == "token"
    assert tokens.result["value"]["total_tokens_used"] == 30 + 20


async def test_start_up_objects_stay_out_of_collections_until_close(database_url: str
                                                                    ) -> None:
    # A full collection over them stalled every request in flight (bench/README.md).
    engine = await create_pattern_execution_engine(make_settings(database_url))
    try:
        tracked = gc.get_objects()
        assert gc.get_freeze_count() > 0
        assert not any(obj is engine.router for obj in tracked)
        del tracked
    finally:
        await engine.close()
    assert gc.get_freeze_count() == 0
    assert any(obj is engine.router for obj in gc.get_objects())


async def test_timeouts_are_failed_results(database_url: str) -> None:
    async def slow(ctx: HandlerContext) -> str:
        await asyncio.sleep(5)
        return "late"

    settings = make_settings(database_url, pattern_infra_timeout="30")
    async with await create_pattern_execution_engine(settings, handlers={"slow": slow}) as eng:
        eng.registry.register(PatternDefinition(
            name="slow_tool", pattern_type=PatternType.INFRASTRUCTURE,
            trigger_pattern=r"\bsnail\b", priority=100, handler="slow"))
        result = await asyncio.wait_for(eng.execute("snail please"), timeout=2)
        assert not result.success
        assert result.error is not None
        assert "timed out after 30 ms" in result.error and "TMWS_PATTERN_INFRA_TIMEOUT" in \
            result.error
        assert eng.get_stats()["failed_executions"] == 1
        # Which failures, and where: operators (and bench/soak.py) read this.
        assert eng.get_stats()["failures_by_code"] == {"pattern_timeout": {"slow_tool": 1}}
        healthy = await eng.execute("check health")
        assert healthy.success


async def test_unbound_handler_is_a_clear_failure(engine: PatternExecutionEngine) -> None:
    engine.registry.register(PatternDefinition(
        name="ghost", pattern_type=PatternType.INFRASTRUCTURE, trigger_pattern="boo+",
        priority=50, handler="missing_handler"))
    result = await engine.execute("booo")
    assert not result.success and "missing_handler" in (result.error or "")


@pytest.mark.parametrize(("query", "mode", "context", "fragment"), [
    ("", None, None, "empty"),
    ("   ", None, None, "empty"),
    ("x" * 2001, None, None, "limit is 2000"),
    ("check health", "warp", None, "unknown execution mode 'warp'"),
    ("check health", None, ["not", "a", "mapping"], "context must be an object"),
    ("check health", None, {"namespace": ""}, "namespace"),
])
async def test_invalid_input_is_rejected_clearly(engine: PatternExecutionEngine, query: str,
                                                 mode: Any, context: Any, fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        await engine.execute(query, mode, context)
    assert engine.get_stats()["total_executions"] == 0


async def test_store_validates_context(engine: PatternExecutionEngine, namespace: str) -> None:
    # Checked before anything runs (tmws.inputs.ExecutionContext), naming the field.
    with pytest.raises(InvalidRequestError, match=r"<= 1.0 - at `context.importance`"):
        await engine.execute("remember x", context={"namespace": namespace, "importance": 7})
    with pytest.raises(InvalidRequestError, match=r"got `str` - at `context.tags`"):
        await engine.execute("remember x", context={"namespace": namespace, "tags": "notalist"})
    assert await engine.memory.count(namespace) == 0


async def test_redis_is_health_checked(database_url: str, redis_url: str) -> None:
    settings = make_settings(database_url, redis_url=redis_url)
    async with await create_pattern_execution_engine(settings) as eng:
        result = await eng.execute("check health", use_cache=False)
        assert result.success and result.result["cache"]["redis"] == "ok"


async def test_unreachable_redis_degrades_but_keeps_serving(database_url: str) -> None:
    settings = make_settings(database_url, redis_url="redis://127.0.0.1:1/0", redis_timeout="0.2")
    async with await create_pattern_execution_engine(settings) as eng:
        health = await eng.execute("check health", use_cache=False)
        assert not health.success
        assert health.error == "unhealthy: cache"
        assert health.result["cache"]["status"] == "degraded"
        tool = await eng.execute("run tool vector_search")
        assert tool.success


async def test_database_outage_and_recovery(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The bundled server stops and starts again under a running engine."""
    data_dir = tmp_path_factory.mktemp("outage")
    embedded = EmbeddedPostgres(data_dir)
    conninfo = embedded.start()
    await upgrade(conninfo)
    settings = make_settings(conninfo, pattern_memory_timeout="1000",
                             pattern_hybrid_timeout="1000", db_pool_timeout="2")
    eng = await create_pattern_execution_engine(settings)
    try:
        assert (await eng.execute("remember the canary sings at dawn")).success
        embedded.stop()  # the server goes away under the running engine

        recall = await eng.execute("recall memories about the canary", use_cache=False)
        assert not recall.success
        assert recall.error is not None and "database unavailable" in recall.error
        started = time.monotonic()
        again = await eng.execute("recall memories about canaries", use_cache=False)
        assert "database unavailable" in (again.error or "")
        assert time.monotonic() - started < 0.5  # known down: fails fast, no queueing

        tool = await eng.execute("run tool vector_search")
        assert tool.success
        hybrid = await eng.execute("analyze the canary system", use_cache=False)
        assert hybrid.success and hybrid.metadata["partial"] is True
        assert hybrid.result["partial"] is True
        assert "database unavailable" in hybrid.result["missing"]
        assert hybrid.result["delegate"]["pattern"] == "analyze_codebase"
        both = await eng.execute("run tool x", ExecutionMode.COMPREHENSIVE, use_cache=False)
        assert both.success and both.result["partial"] is True
        assert both.result["handler"]["action"] == "delegate"
        health = await eng.execute("check health", use_cache=False)
        assert not health.success and health.result["database"]["status"] == "unavailable"
        decision = await eng.router.route("anything in memory on canaries")
        assert decision.pattern_type is PatternType.INFRASTRUCTURE
        assert not eng.database.available

        restarted = EmbeddedPostgres(data_dir)
        restarted.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                recovered = await eng.execute("recall memories about the canary",
                                              use_cache=False)
                if recovered.success or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert recovered.success, recovered.error
            assert recovered.result["memories"][0]["content"] == "the canary sings at dawn"
            assert eng.database.available
        finally:
            await eng.close()
            restarted.stop()
    finally:
        await eng.close()


async def test_temporal_window_from_the_query(engine: PatternExecutionEngine,
                                              namespace: str) -> None:
    ctx = {"namespace": namespace}
    stored = await engine.execute("remember the february outage", context=ctx)
    await engine.database.fetch("UPDATE memories SET created_at = now() - interval '40 days'"
                                " WHERE id = %s", (stored.result["id"],))
    await engine.execute("remember the march release", context=ctx)
    recent = await engine.execute("show recent decisions from the past 7 days", context=ctx)
    assert recent.pattern_name == "temporal_analysis"

    def own(result: Any) -> list[str]:  # other tests' shared memories are visible too
        return [m["content"] for m in result["memories"] if m["namespace"] == namespace]

    assert recent.result["window_days"] == 7
    assert own(recent.result) == ["the march release"]
    month = await engine.execute("latest notes of the last month",
                                 context={**ctx, "limit": 100})
    assert month.result["window_days"] == 30 and own(month.result) == ["the march release"]
    everything = await engine.execute("latest notes", context={**ctx, "days": 365,
                                                               "limit": 100})
    assert own(everything.result) == ["the march release", "the february outage"]


async def test_cache_never_leaks_private_memories_across_namespaces(
        engine: PatternExecutionEngine, namespace: str) -> None:
    owner, other = {"namespace": namespace + "-a"}, {"namespace": namespace + "-b"}
    await engine.execute("remember the payroll export runs on fridays", context=owner)
    mine = await engine.execute("recall memories about payroll export", context=owner)
    assert [m["content"] for m in mine.result["memories"]] == \
        ["the payroll export runs on fridays"]
    assert (await engine.execute("recall memories about payroll export",
                                 context=owner)).cache_hit
    theirs = await engine.execute("recall memories about payroll export", context=other)
    assert not theirs.cache_hit
    assert all(m["namespace"] != owner["namespace"] for m in theirs.result["memories"])


async def test_example_routed_queries_run_their_pattern(engine: PatternExecutionEngine) -> None:
    result = await engine.execute("please check the health of the database")
    assert result.success and result.pattern_name == "health_check"
    routing = result.metadata["routing"]
    assert routing["decided_by"] == "examples"
    assert routing["nearest_examples"][0]["example"] == "check database health"
    again = await engine.execute("please check the health of the database")
    assert again.cache_hit


async def test_off_topic_query_abstains(engine: PatternExecutionEngine) -> None:
    result = await engine.execute("tell me a joke")
    assert not result.success and result.error_code == "no_pattern_matched"
    assert result.metadata["routing"]["abstained"] is True


async def test_performance_compares_recent_latencies_with_the_targets(
        engine: PatternExecutionEngine) -> None:
    before = engine.performance()["infrastructure"]["samples"]
    for _ in range(3):
        await engine.execute("report metrics")
    report = engine.performance()
    infra = report["infrastructure"]
    assert infra["samples"] == before + 3
    assert infra["p50_ms"] <= infra["p95_ms"] <= infra["p99_ms"]
    assert infra["targets_ms"] == {"p50": 25, "p95": 50, "p99": 75}  # the library's
    assert infra["within_targets"] is None  # too few samples to judge a p99
    for _ in range(100):
        await engine.execute("report metrics")
    infra = engine.performance()["infrastructure"]
    assert infra["within_targets"] == (infra["p50_ms"] <= 25 and infra["p95_ms"] <= 50
                                       and infra["p99_ms"] <= 75)
    assert engine.get_stats()["performance"]["memory"]["samples"] >= 0


async def test_every_documented_example_query_answers(engine: PatternExecutionEngine,
                                                      namespace: str) -> None:
    """The library's example_queries are what its users copy first: each one executes
    successfully, and its arguments (tags, comparison subjects) come from the query even
    where the trigger's named groups do not match it."""
    from tmws.patterns import default_library_path, load_pattern_file

    failed = []
    for pattern in load_pattern_file(default_library_path()).patterns:
        for query in pattern.example_queries:
            result = await engine.execute(query, "comprehensive", {"namespace": namespace})
            if not result.success:
                failed.append(f"{pattern.name}: {query!r}: {result.error}")
    assert not failed, "\n".join(failed)


async def test_the_health_probe_gets_the_budget_of_the_mode_it_runs_in(
        database_url: str) -> None:
    """The database probe takes 60% of what the execution has left: the infrastructure
    budget in balanced mode, the hybrid one in comprehensive mode (where a busy moment of
    30 ms must not call a working database unavailable)."""
    import re as _re
    from urllib.parse import urlsplit

    import psycopg
    from psycopg import sql

    from tests.conftest import make_settings, scratch_database

    async with scratch_database(database_url, migrate=make_settings(database_url)) as url:
        settings = make_settings(url, pattern_infra_timeout="50", pattern_hybrid_timeout="400")
        async with await create_pattern_execution_engine(settings) as engine:
            name = urlsplit(url).path.lstrip("/")
            async with await psycopg.AsyncConnection.connect(database_url,
                                                             autocommit=True) as conn:
                await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)")
                                   .format(sql.Identifier(name)))
            probes: dict[str, float] = {}
            for mode in ("balanced", "comprehensive"):
                result = await engine.execute("check database health", mode, use_cache=False)
                assert result.error_code == "health_check_failed", result
                assert isinstance(result.result, dict)
                reason = str(result.result["database"]["reason"])
                found = _re.search(r"within ([0-9.]+) s", reason)
                assert found is not None, reason
                probes[mode] = float(found.group(1))
    assert 0 < probes["balanced"] <= 0.03
    assert 0.15 < probes["comprehensive"] <= 0.24
