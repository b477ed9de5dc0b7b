"""Prometheus metrics, named, labelled and bucketed as the dashboard and alert rules in
``deploy/`` expect (deploy/README.md, Monitoring and Alerts).

Label values stay bounded: ``pattern_name`` is a registered pattern's name or ``none``
(keyword-routed or unmatched queries), never text from the query.

Cache hit rates are counted, not sampled: ``tmws_pattern_cache_lookups_total`` and
``tmws_pattern_cache_hits_total`` (by ``cache_type``: ``overall``, ``local``, ``redis``) add up
over workers like every counter, and the gauge ``tmws_pattern_cache_hit_rate`` is
computed from those sums when a scrape is answered, by whichever worker answers it, so every
scrape of an instance gives the same ratio. Alerts and dashboards use
``rate(hits) / rate(lookups)``: the gauge is a since-start ratio.
"""

from __future__ import annotations

import math
import os
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any, Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from tmws._version import __version__

# Set by `tmws serve` for its workers: each process writes its samples to files there and a
# scrape of any worker adds them all up (prometheus-client's multiprocess mode).
MULTIPROCESS: Final = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

__all__ = [
    "CACHE_TYPES",
    "DATABASE_CONNECTIONS_ACTIVE",
    "DATABASE_QUERY_DURATION",
    "DATABASE_READS",
    "DATABASE_REPLICA_LAG",
    "DATABASE_REPLICA_USABLE",
    "MULTIPROCESS",
    "PATTERN_CACHE_HITS",
    "PATTERN_CACHE_LOOKUPS",
    "PATTERN_EXECUTIONS",
    "PATTERN_EXECUTION_DURATION",
    "PATTERN_TOKENS_USED",
    "ExecutionMetrics",
    "cache_hit_rates",
    "exposition",
    "worker_exited",
]

PATTERN_EXECUTIONS: Final = Counter(
    "tmws_pattern_executions_total", "Total pattern executions",
    ["pattern_type", "pattern_name", "success"])
PATTERN_EXECUTION_DURATION: Final = Histogram(
    "tmws_pattern_execution_duration_seconds", "Pattern execution duration",
    ["pattern_type"], buckets=[0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
# overall: executions whose result the cache could have answered; local: the same lookups
# in the in-process tier; redis: those L1 missed and Redis answered.
CACHE_TYPES: Final = ("overall", "local", "redis")
PATTERN_CACHE_LOOKUPS: Final = Counter(
    "tmws_pattern_cache_lookups_total", "Result cache lookups", ["cache_type"])
PATTERN_CACHE_HITS: Final = Counter(
    "tmws_pattern_cache_hits_total", "Result cache hits", ["cache_type"])
if not MULTIPROCESS:  # exported from the start (0), so rate() has a series; with workers,
    # a worker's first lookup creates them (no counter file for a process that never looks up)
    for _cache_type in CACHE_TYPES:
        PATTERN_CACHE_LOOKUPS.labels(_cache_type)
        PATTERN_CACHE_HITS.labels(_cache_type)
_HIT_RATE: Final = ("tmws_pattern_cache_hit_rate",
                    "Pattern cache hit rate (0..1) since start, all workers: "
                    "tmws_pattern_cache_hits_total / tmws_pattern_cache_lookups_total "
                    "(NaN before the first lookup)")
PATTERN_TOKENS_USED: Final = Counter(
    "tmws_pattern_tokens_used_total", "Total tokens used", ["pattern_type"])
DATABASE_CONNECTIONS_ACTIVE: Final = Gauge(
    "tmws_database_connections_active", "Active database connections",
    multiprocess_mode="livesum")
DATABASE_QUERY_DURATION: Final = Histogram(
    "tmws_database_query_duration_seconds", "Database query duration",
    buckets=[0.01, 0.05, 0.1, 0.5, 1.0])
# Read replicas (tmws.database._replicas), labelled replica1, replica2, ... in the order of
# TMWS_DATABASE_REPLICA_URLS (never a URL). Lag: the worst any live worker measured; usable:
# 0 as soon as one worker skips the replica.
DATABASE_REPLICA_LAG: Final = Gauge(
    "tmws_database_replica_lag_seconds",
    "Replay lag of each read replica (NaN while it cannot be reached)", ["replica"],
    multiprocess_mode="livemax")
DATABASE_REPLICA_USABLE: Final = Gauge(
    "tmws_database_replica_usable",
    "1 while a read replica serves reads: reachable, a standby, within "
    "TMWS_DATABASE_REPLICA_MAX_LAG", ["replica"], multiprocess_mode="livemin")
DATABASE_READS: Final = Counter(
    "tmws_database_reads_total", "Memory reads with read replicas configured, by the server "
    "that answered them", ["server"])
# The derived recall index (TMWS_RECALL_INDEX=memory, tmws._recall_index): ready is 0 as
# soon as one worker's index cannot answer (loading, reloading, compacting, behind); every recall is
# counted by who ranked it: "index", or the reason it was ranked in SQL.
RECALL_INDEX_READY: Final = Gauge(
    "tmws_recall_index_ready", "1 while every worker's derived recall index answers recall",
    multiprocess_mode="livemin")
RECALL_INDEX_SEARCHES: Final = Counter(
    "tmws_recall_index_searches_total", "Recalls with the derived index configured, by who "
    "ranked them: index, or why SQL did (not_ready, reloading, compacting, "
    "catch_up_failed, index_failed)",
    ["outcome"])
_INFO_LABELS: Final = {"version": __version__, "pattern_service": "enabled"}
if MULTIPROCESS:  # Info metrics cannot be shared between processes; a gauge of 1 can
    Gauge("tmws_info", "TMWS version and configuration", list(_INFO_LABELS),
          multiprocess_mode="max").labels(**_INFO_LABELS).set(1)
else:
    Info("tmws", "TMWS version and configuration").info(_INFO_LABELS)


# Recorders that batch (one process): flushed before every scrape.
_RECORDERS: Final[weakref.WeakSet[ExecutionMetrics]] = weakref.WeakSet()


def cache_hit_rates(families: Iterable[Metric]) -> dict[str, float]:
    """hits / lookups per cache type from collected counter families (NaN: no lookup)."""
    sums: dict[str, list[float]] = {t: [0.0, 0.0] for t in CACHE_TYPES}
    index = {"tmws_pattern_cache_hits": 0, "tmws_pattern_cache_lookups": 1}
    for family in families:
        slot = index.get(family.name.removesuffix("_total"))  # as parsed from text, too
        if slot is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                sums.setdefault(sample.labels["cache_type"], [0.0, 0.0])[slot] += sample.value
    return {t: hits / lookups if lookups else math.nan for t, (hits, lookups) in sums.items()}


def _hit_rate_family(families: Iterable[Metric]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(*_HIT_RATE, labels=["cache_type"])
    for cache_type, rate in cache_hit_rates(families).items():
        gauge.add_metric([cache_type], rate)
    return gauge


class _HitRate(Collector):
    """The gauge, computed from the counters at collection (one process)."""

    def collect(self) -> Iterator[Metric]:
        yield _hit_rate_family([*PATTERN_CACHE_HITS.collect(), *PATTERN_CACHE_LOOKUPS.collect()])

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(*_HIT_RATE, labels=["cache_type"])


class _Collected(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


if not MULTIPROCESS:
    REGISTRY.register(_HitRate())


def exposition() -> bytes:
    """The scrape body: this process's metrics, or every worker's in multiprocess mode."""
    if not MULTIPROCESS:
        for recorder in list(_RECORDERS):
            recorder.flush()
        return generate_latest()
    # Every worker's files, summed; the hit rate from those sums (not this worker's own).
    families = list(multiprocess.MultiProcessCollector(None).collect())  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected([*families, _hit_rate_family(families)]))
    return generate_latest(registry)


def worker_exited(pid: int) -> None:
    """Drop a finished worker's live gauges (multiprocess mode)."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _Pending:
    """One label combination's samples not yet handed to prometheus-client."""

    __slots__ = ("bounds", "buckets", "count", "duration", "executions", "seconds", "tokens",
                 "used")

    def __init__(self, executions: Any, duration: Any, used: Any) -> None:
        self.executions, self.duration, self.used = executions, duration, used
        self.bounds: list[float] = list(duration._upper_bounds)  # ends with +Inf
        self.buckets = [0] * len(self.bounds)
        self.count = self.tokens = 0
        self.seconds = 0.0


class ExecutionMetrics:
    """Records executions.

    With one process, samples accumulate in plain integers and reach prometheus-client
    only when this process is scraped (exposition() flushes first): its lock per increment
    cost ~4 us per execution, ~19 us per served cache hit (bench/README.md). With several
    workers every sample goes straight to the shared files, so that a scrape of any worker
    sees every worker's samples at once.
    """

    def __init__(self) -> None:
        # (type, name, success) -> pending samples with their label children
        self._pending: dict[tuple[str, str | None, bool], _Pending] = {}
        self._batching = not MULTIPROCESS
        # Cache lookups and hits not yet counted, in CACHE_TYPES order (batched mode).
        self._lookups = [0, 0, 0]
        self._hits = [0, 0, 0]
        self._lookup_children: list[Any] = []  # label children, made at the first lookup
        self._hit_children: list[Any] = []
        if self._batching:
            _RECORDERS.add(self)

    def cache_lookup(self, tier: str | None, redis_lookup: bool) -> None:
        """One result-cache lookup an execution made: ``tier`` is where it hit ("local",
        "redis") or None; ``redis_lookup`` whether Redis was asked (L1 missed)."""
        local_hit = tier == "local"
        redis_hit = tier == "redis"
        if not self._lookup_children:
            self._lookup_children = [PATTERN_CACHE_LOOKUPS.labels(t) for t in CACHE_TYPES]
            self._hit_children = [PATTERN_CACHE_HITS.labels(t) for t in CACHE_TYPES]
        if self._batching:
            lookups, hits = self._lookups, self._hits
            lookups[0] += 1
            lookups[1] += 1
            if redis_lookup:
                lookups[2] += 1
            if tier is not None:
                hits[0] += 1
                hits[1] += local_hit
                hits[2] += redis_hit
            return
        self._lookup_children[0].inc()
        self._lookup_children[1].inc()
        if redis_lookup:
            self._lookup_children[2].inc()
        if tier is not None:
            self._hit_children[0].inc()
            self._hit_children[1 if local_hit else 2].inc()

    def record(self, pattern_type: str, pattern_name: str | None, success: bool,
               seconds: float, tokens: int) -> None:
        pending = self._pending.get((pattern_type, pattern_name, success))
        if pending is None:
            pending = _Pending(
                PATTERN_EXECUTIONS.labels(pattern_type, pattern_name or "none",
                                          str(success).lower()),
                PATTERN_EXECUTION_DURATION.labels(pattern_type),
                PATTERN_TOKENS_USED.labels(pattern_type))
            self._pending[(pattern_type, pattern_name, success)] = pending
        if not self._batching:
            pending.executions.inc()
            pending.duration.observe(seconds)
            if tokens:
                pending.used.inc(tokens)
            return
        pending.count += 1
        pending.tokens += tokens
        pending.seconds += seconds
        # Histogram.observe's rule: the first bucket whose upper bound is >= the value.
        pending.buckets[bisect_left(pending.bounds, seconds)] += 1

    def flush(self) -> None:
        """Hand the accumulated samples to prometheus-client (before a scrape)."""
        for index in range(len(CACHE_TYPES)):
            if self._lookups[index]:
                self._lookup_children[index].inc(self._lookups[index])
                self._lookups[index] = 0
            if self._hits[index]:
                self._hit_children[index].inc(self._hits[index])
                self._hits[index] = 0
        for pending in self._pending.values():
            if not pending.count:
                continue
            pending.executions.inc(pending.count)
            if pending.tokens:
                pending.used.inc(pending.tokens)
            # Histogram has no bulk observe: add to the same values observe() would.
            pending.duration._sum.inc(pending.seconds)
            for index, count in enumerate(pending.buckets):
                if count:
                    pending.duration._buckets[index].inc(count)
                    pending.buckets[index] = 0
            pending.count = pending.tokens = 0
            pending.seconds = 0.0
