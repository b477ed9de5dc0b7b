"""Batched execution metrics give exactly the samples direct recording would; cache hit
rates are counted, and one ratio is scraped whatever worker answers."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PrivateRedis
from tests.fix_server import start_server, stop_server
from tmws.metrics import (
    CACHE_TYPES,
    PATTERN_EXECUTION_DURATION,
    ExecutionMetrics,
    cache_hit_rates,
    exposition,
)

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


def test_cache_lookups_are_counted_and_the_gauge_is_their_ratio() -> None:
    def counted() -> dict[str, tuple[float, float]]:
        return {t: (REGISTRY.get_sample_value("tmws_pattern_cache_hits_total",
                                              {"cache_type": t}) or 0.0,
                    REGISTRY.get_sample_value("tmws_pattern_cache_lookups_total",
                                              {"cache_type": t}) or 0.0) for t in CACHE_TYPES}

    exposition()
    before = counted()
    recorder = ExecutionMetrics()
    recorder.cache_lookup(None, True)  # missed both tiers
    recorder.cache_lookup("redis", True)
    recorder.cache_lookup("local", False)
    recorder.cache_lookup("local", False)
    assert counted() == before  # batched until a scrape
    text = exposition().decode()
    after = counted()
    delta = {t: (after[t][0] - before[t][0], after[t][1] - before[t][1]) for t in CACHE_TYPES}
    assert delta == {"overall": (3, 4), "local": (2, 4), "redis": (1, 2)}
    rates = _gauge(text)
    for cache_type, (hits, lookups) in after.items():
        assert rates[cache_type] == pytest.approx(hits / lookups)


def test_hit_rates_from_counter_families() -> None:
    families = list(text_string_to_metric_families(
        "# TYPE tmws_pattern_cache_hits_total counter\n"
        'tmws_pattern_cache_hits_total{cache_type="overall"} 3\n'
        "# TYPE tmws_pattern_cache_lookups_total counter\n"
        'tmws_pattern_cache_lookups_total{cache_type="overall"} 4\n'
        'tmws_pattern_cache_lookups_total{cache_type="redis"} 0\n'))
    rates = cache_hit_rates(families)
    assert rates["overall"] == 0.75
    assert math.isnan(rates["redis"]) and math.isnan(rates["local"])  # no lookup: no ratio


def _gauge(text: str) -> dict[str, float]:
    return {sample.labels["cache_type"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "tmws_pattern_cache_hit_rate" for sample in family.samples}


def _counts(text: str) -> dict[tuple[str, str], float]:
    return {(family.name.removesuffix("_total"), sample.labels["cache_type"]): sample.value
            for family in text_string_to_metric_families(text)
            if family.name.removesuffix("_total") in ("tmws_pattern_cache_hits",
                                                      "tmws_pattern_cache_lookups")
            for sample in family.samples if sample.name.endswith("_total")}


def test_two_workers_scrape_one_hit_rate(database_url: str, private_redis: PrivateRedis,
                                         tmp_path: Path) -> None:
    """With TMWS_WORKERS=2 the gauge once flipped between the workers' own ratios; now any
    worker answers the ratio of the summed counters, and the counters add up exactly."""
    process, base = start_server({"TMWS_DATABASE_URL": database_url, "TMWS_WORKERS": "2",
                                  "TMWS_REDIS_URL": private_redis.url}, tmp_path)
    try:
        executions = 40
        for _ in range(executions):  # a fresh connection each: both workers take some
            answer = httpx.post(f"{base}/api/v1/execute", json={"query": "run tool lint"},
                                timeout=10)
            assert answer.status_code == 200 and answer.json()["success"], answer.text
        served: dict[int, int] = {}
        for _ in range(30):
            stats = httpx.get(f"{base}/api/v1/stats", timeout=10).json()
            served[stats["worker_pid"]] = stats["total_executions"]
        assert len(served) == 2 and sum(served.values()) == executions, served
        workers_used = sum(1 for count in served.values() if count)
        scrapes = [httpx.get(f"{base}/metrics", timeout=10).text for _ in range(20)]
        counts = _counts(scrapes[0])
        # One miss in all; each worker's first lookup missed its L1 and asked Redis.
        assert counts == {
            ("tmws_pattern_cache_lookups", "overall"): executions,
            ("tmws_pattern_cache_hits", "overall"): executions - 1,
            ("tmws_pattern_cache_lookups", "local"): executions,
            ("tmws_pattern_cache_hits", "local"): executions - workers_used,
            ("tmws_pattern_cache_lookups", "redis"): workers_used,
            ("tmws_pattern_cache_hits", "redis"): workers_used - 1,
        }
        expected = {"overall": (executions - 1) / executions,
                    "local": (executions - workers_used) / executions,
                    "redis": (workers_used - 1) / workers_used}
        for text in scrapes:  # whichever worker answered
            assert _counts(text) == counts
            assert _gauge(text) == pytest.approx(expected)
    finally:
        stop_server(process)
