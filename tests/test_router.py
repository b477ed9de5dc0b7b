from __future__ import annotations

import msgspec
import pytest

from tmws.models import ExecutionMode, PatternType
from tmws.patterns import default_library_path, load_pattern_file
from tmws.registry import PatternRegistry
from tmws.router import HybridRouter


@pytest.fixture(scope="module")
def router() -> HybridRouter:
    library = load_pattern_file(default_library_path())
    return HybridRouter(PatternRegistry(library.patterns))


async def test_trigger_decides_with_alternatives(router: HybridRouter) -> None:
    decision = await router.route("run tool to check health", ExecutionMode.BALANCED)
    assert decision.decided_by == "trigger"
    assert decision.pattern_name == "execute_mcp_tool"
    assert "health_check" in decision.alternative_routes
    assert decision.trigger_pattern is not None and "tool" in decision.trigger_pattern


@pytest.mark.parametrize(("query", "expected"), [
    ("anything in memory on rollbacks please", PatternType.MEMORY),
    ("ping the gateway uptime", PatternType.INFRASTRUCTURE),
    ("trends across incidents please", PatternType.HYBRID),
])
async def test_keywords_pick_the_path(router: HybridRouter, query: str,
                                      expected: PatternType) -> None:
    decision = await router.route(query, "balanced")
    assert decision.decided_by == "keywords"
    assert decision.pattern_type is expected
    assert decision.pattern_name is None
    assert 0 < decision.confidence <= 0.6


async def test_fast_mode_never_routes_to_memory(router: HybridRouter) -> None:
    decision = await router.route("recall memories about auth", ExecutionMode.FAST)
    assert decision.pattern_type is PatternType.INFRASTRUCTURE
    assert decision.pattern_name != "recall_memory"


async def test_no_fit_abstains_with_candidates(router: HybridRouter) -> None:
    decision = await router.route("what is the weather in paris", ExecutionMode.BALANCED)
    assert decision.decided_by == "none" and decision.confidence == 0.0
    stats = router.get_stats()
    assert stats["decisions"]["none"] >= 1


async def test_examples_decide_when_no_trigger_matches(router: HybridRouter) -> None:
    decision = await router.route("please check the health of the database", "balanced")
    assert decision.decided_by == "examples"
    assert decision.pattern_name == "health_check"
    best = decision.nearest_examples[0]
    assert best.pattern == "health_check" and best.example == "check database health"
    assert decision.threshold is not None and best.score >= decision.threshold
    assert decision.margin is not None and decision.margin >= router.min_margin
    assert decision.runner_up == decision.nearest_examples[1].pattern
    assert not decision.abstained and "closest to example" in decision.reasoning


async def test_off_topic_queries_abstain_with_scored_candidates(router: HybridRouter) -> None:
    for query in ("tell me a joke", "what is the weather in paris"):
        decision = await router.route(query, "balanced")
        assert decision.decided_by == "none" and decision.abstained, query
        assert all(c.score < router.min_score for c in decision.nearest_examples)


async def test_fast_mode_limits_stage_two_to_infrastructure(router: HybridRouter) -> None:
    decision = await router.route("bring back our notes on the outage", ExecutionMode.FAST)
    assert decision.pattern_type is PatternType.INFRASTRUCTURE
    kinds = {router.registry.patterns(PatternType.INFRASTRUCTURE)[0].pattern_type}
    for candidate in decision.nearest_examples:
        pattern = router.registry.get(candidate.pattern)
        assert pattern is not None and pattern.pattern_type in kinds


async def test_thresholds_can_be_overridden_per_call(router: HybridRouter) -> None:
    query = "please check the health of the database"
    strict = router.explain(query, ExecutionMode.BALANCED, None, min_score=0.99, record=False)
    assert strict.decided_by != "examples"
    assert strict.threshold == 0.99


async def test_a_repeated_stage_two_decision_follows_pattern_changes() -> None:
    """Stage-2 decisions are kept per pattern set: a registration that brings a closer
    example, a threshold change or a database outage each decide afresh."""
    library = load_pattern_file(default_library_path())
    database_up = True
    router = HybridRouter(PatternRegistry(library.patterns),
                          database_available=lambda: database_up)
    query = "tally the orphaned shards across replicas"
    first = router.explain(query, ExecutionMode.BALANCED, None)
    again = router.explain(query, ExecutionMode.BALANCED, None)
    assert again == first and again is not first  # each caller gets its own to mark
    again.reasoning = "marked by a caller"
    assert router.explain(query, ExecutionMode.BALANCED, None).reasoning == first.reasoning
    counted = router.get_stats()["decisions"][first.decided_by]
    router.explain(query, ExecutionMode.BALANCED, None)
    assert router.get_stats()["decisions"][first.decided_by] == counted + 1

    template = library.patterns[0]
    router.registry.register(msgspec.structs.replace(
        template, name="shard_tally", pattern_type=PatternType.INFRASTRUCTURE,
        trigger_pattern=r"\bzzqx\b", examples=[query], metadata={}))
    changed = router.explain(query, ExecutionMode.BALANCED, None)
    assert changed.decided_by == "examples" and changed.pattern_name == "shard_tally"

    near = "please check the health of the database"
    assert router.explain(near, ExecutionMode.BALANCED, None).decided_by == "examples"
    router.min_score = 0.99
    assert router.explain(near, ExecutionMode.BALANCED, None).decided_by != "examples"

    router.min_score = 0.3
    recall = "bring back our notes on the outage"
    assert router.explain(recall, ExecutionMode.BALANCED, None).pattern_type is not (
        PatternType.INFRASTRUCTURE)
    database_up = False
    down = router.explain(recall, ExecutionMode.BALANCED, None)
    assert down.pattern_type is PatternType.INFRASTRUCTURE
