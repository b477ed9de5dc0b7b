from __future__ import annotations

import pytest

from tmws.models import ExecutionMode, PatternType
from tmws.patterns import default_library_path, load_pattern_file
from tmws.registry import PatternRegistry
from tmws.router import HybridRouter, nearest_patterns


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
    ("anything in memory on rollbacks", PatternType.MEMORY),
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


def test_nearest_patterns_rank_by_shared_words() -> None:
    library = load_pattern_file(default_library_path())
    nearest = nearest_patterns("vector search tool please", list(library.patterns))
    assert nearest[0][0] == "execute_mcp_tool"
    assert nearest_patterns("", list(library.patterns)) == []
