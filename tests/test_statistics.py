"""The engine's own counters and percentiles (tmws._statistics), as pure logic."""

from __future__ import annotations

from tmws._statistics import ExecutionStatistics
from tmws.models import ExecutionResult, PatternType
from tmws.patterns import LatencyTargets

TARGETS = {t: LatencyTargets(p50=50.0, p95=95.0, p99=99.0) for t in PatternType}


def _record(stats: ExecutionStatistics, pattern_type: PatternType, elapsed_ms: float, *,
            success: bool = True, cache_hit: bool = False, tokens: int = 0) -> None:
    stats.record(pattern_type, ExecutionResult(pattern_name="p", success=success,
                                               cache_hit=cache_hit, tokens_used=tokens),
                 elapsed_ms)


def test_percentiles_are_nearest_rank_and_judged_only_with_enough_samples() -> None:
    stats = ExecutionStatistics()
    for ms in range(1, 100):
        _record(stats, PatternType.MEMORY, float(ms))
    memory = stats.performance(TARGETS)["memory"]
    assert (memory["p50_ms"], memory["p95_ms"], memory["p99_ms"]) == (50.0, 95.0, 99.0)
    assert memory["within_targets"] is None  # 99 samples: a p99 means nothing yet
    _record(stats, PatternType.MEMORY, 100.0)
    memory = stats.performance(TARGETS)["memory"]
    assert (memory["p50_ms"], memory["p95_ms"], memory["p99_ms"]) == (50.0, 95.0, 99.0)
    assert memory["within_targets"] is True
    _record(stats, PatternType.MEMORY, 1000.0)  # the p99 moves past its target
    assert stats.performance(TARGETS)["memory"]["within_targets"] is False
    infra = stats.performance(TARGETS)["infrastructure"]
    assert infra["samples"] == 0 and infra["p50_ms"] is None


def test_one_sample_is_every_percentile() -> None:
    stats = ExecutionStatistics()
    _record(stats, PatternType.HYBRID, 7.0)
    hybrid = stats.performance(TARGETS)["hybrid"]
    assert hybrid["p50_ms"] == hybrid["p99_ms"] == 7.0


def test_counters_split_by_outcome_and_type() -> None:
    stats = ExecutionStatistics()
    _record(stats, PatternType.MEMORY, 2.0, tokens=30)
    _record(stats, PatternType.MEMORY, 4.0, success=False, tokens=10)
    _record(stats, PatternType.INFRASTRUCTURE, 1.0, cache_hit=True)
    assert (stats.total, stats.successful, stats.failed, stats.cache_hits) == (3, 2, 1, 1)
    assert stats.tokens == 40 and stats.time_ms == 7.0
    assert stats.by_type["memory"] == {"executions": 2, "failures": 1}
    assert stats.by_type["infrastructure"] == {"executions": 1, "failures": 0}
