"""Batched execution metrics give exactly the samples direct recording would."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tmws.metrics import PATTERN_EXECUTION_DURATION, ExecutionMetrics, exposition

_BUCKETS = ("0.01", "0.05", "0.1", "0.2", "0.5", "1.0", "2.0", "+Inf")


def _samples(pattern_type: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for le in _BUCKETS:
        value = REGISTRY.get_sample_value("tmws_pattern_execution_duration_seconds_bucket",
                                          {"pattern_type": pattern_type, "le": le})
        found[le] = value or 0.0
    found["sum"] = REGISTRY.get_sample_value("tmws_pattern_execution_duration_seconds_sum",
                                             {"pattern_type": pattern_type}) or 0.0
    found["executions"] = REGISTRY.get_sample_value(
        "tmws_pattern_executions_total",
        {"pattern_type": pattern_type, "pattern_name": "none", "success": "true"}) or 0.0
    found["tokens"] = REGISTRY.get_sample_value(
        "tmws_pattern_tokens_used_total", {"pattern_type": pattern_type}) or 0.0
    return found


def test_batched_samples_equal_direct_observations() -> None:
    # Bucket edges included: observe() puts a value equal to a bound in that bucket.
    values = [0.0, 0.004, 0.01, 0.0100001, 0.05, 0.2, 0.7, 1.0, 3.5, 0.15]
    batched = ExecutionMetrics()
    for seconds in values:
        batched.record("test-batched", None, True, seconds, 7)
    before = _samples("test-batched")
    assert before["executions"] == 0  # nothing reaches prometheus-client before a scrape
    assert b"test-batched" in exposition()  # the scrape flushes
    after = _samples("test-batched")
    for seconds in values:
        PATTERN_EXECUTION_DURATION.labels("test-direct").observe(seconds)
    direct = _samples("test-direct")
    assert [after[le] for le in _BUCKETS] == [direct[le] for le in _BUCKETS]
    assert after["sum"] == direct["sum"]
    assert after["executions"] == len(values) and after["tokens"] == 7 * len(values)
    exposition()  # a second flush adds nothing
    assert _samples("test-batched") == after
