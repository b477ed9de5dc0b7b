"""What the engine reports about itself: execution counters, latency percentiles against
the pattern file's targets, the statistics of its parts (``GET /api/v1/stats``) and the
typed health report (:mod:`tmws.health`).

:class:`ServiceStatus` reads the engine's parts, never the engine: it is what handlers that
declared ``reads_stats`` or ``database`` are given, so a handler cannot reach up into the
engine that runs it.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import msgspec

from tmws._result_cache import ResultCache
from tmws._version import __version__
from tmws.admission import Admission
from tmws.audit import AuditLog
from tmws.config import Settings
from tmws.database import Database, request_budget
from tmws.health import CacheHealth, DatabaseHealth, EngineHealth, HealthReport
from tmws.models import ExecutionResult, PatternType
from tmws.patterns import LatencyTargets
from tmws.registry import PatternRegistry
from tmws.router import HybridRouter

__all__ = ["ExecutionStatistics", "ServiceStatus"]

_LATENCY_WINDOW: Final = 2048  # executions per type kept for the percentiles
_MIN_LATENCY_SAMPLES: Final = 100


class ExecutionStatistics:
    """This process's execution counters, in total and per pattern type, and the latest
    execution times per type for the percentiles."""

    __slots__ = ("by_type", "cache_hits", "failed", "failures_by_code", "recent_ms",
                 "successful", "time_ms", "tokens", "total")

    def __init__(self) -> None:
        self.total = self.successful = self.failed = self.cache_hits = 0
        self.tokens = 0
        self.time_ms = 0.0
        self.by_type: dict[str, dict[str, int]] = {
            t.value: {"executions": 0, "failures": 0} for t in PatternType}
        self.recent_ms: dict[str, deque[float]] = {
            t.value: deque(maxlen=_LATENCY_WINDOW) for t in PatternType}
        # error code -> pattern (or "none") -> failures: which failures, and where
        self.failures_by_code: dict[str, dict[str, int]] = {}

    def record(self, pattern_type: PatternType, result: ExecutionResult,
               elapsed_ms: float) -> None:
        self.total += 1
        self.time_ms += elapsed_ms
        self.tokens += result.tokens_used
        if result.cache_hit:
            self.cache_hits += 1
        type_counts = self.by_type[pattern_type]
        type_counts["executions"] += 1
        self.recent_ms[pattern_type].append(elapsed_ms)
        if result.success:
            self.successful += 1
        else:
            self.failed += 1
            type_counts["failures"] += 1
            by_pattern = self.failures_by_code.setdefault(result.error_code or "unknown", {})
            name = result.pattern_name or "none"
            by_pattern[name] = by_pattern.get(name, 0) + 1

    def performance(self, targets: Mapping[PatternType, LatencyTargets]
                    ) -> dict[str, dict[str, Any]]:
        """Per pattern type: p50/p95/p99 of the latest executions (ms) next to the
        library's ``performance_targets``; ``within_targets`` is None until there are
        enough samples for a p99 to mean something."""
        report: dict[str, dict[str, Any]] = {}
        for pattern_type in PatternType:
            samples = sorted(self.recent_ms[pattern_type])
            target = targets[pattern_type]
            observed = {q: _nearest_rank(samples, q) for q in ("p50", "p95", "p99")}
            report[pattern_type.value] = {
                "samples": len(samples),
                **{f"{q}_ms": observed[q] for q in observed},
                "targets_ms": msgspec.to_builtins(target),
                "within_targets": None if len(samples) < _MIN_LATENCY_SAMPLES else all(
                    (observed[q] or 0.0) <= getattr(target, q) for q in observed),
            }
        return report


class ServiceStatus:
    """Statistics and health of an engine's parts."""

    def __init__(self, settings: Settings, *, executions: ExecutionStatistics,
                 results: ResultCache, registry: PatternRegistry, router: HybridRouter,
                 audit: AuditLog, admission: Admission, database: Database,
                 targets: Mapping[PatternType, LatencyTargets]) -> None:
        self._settings = settings
        self.executions = executions
        self._results = results
        self._registry = registry
        self._router = router
        self._audit = audit
        self._admission = admission
        self._database = database
        self._targets = targets
        # The pattern group's figures once the engine has joined one.
        self.sync_stats: Callable[[], dict[str, Any]] | None = None
        # The derived recall index's figures, when TMWS_RECALL_INDEX=memory.
        self.recall_index_stats: Callable[[], dict[str, Any]] | None = None

    def use_targets(self, targets: Mapping[PatternType, LatencyTargets]) -> None:
        """A reloaded pattern file's ``performance_targets``."""
        self._targets = targets

    def performance(self) -> dict[str, dict[str, Any]]:
        return self.executions.performance(self._targets)

    def pool_stats(self) -> dict[str, Any]:
        return self._database.pool_stats()

    def stats(self) -> dict[str, Any]:
        c = self.executions
        registry = self._registry.get_stats()
        return {
            # Each worker answers with its own figures: the pid says which one did.
            "worker_pid": os.getpid(),
            "total_executions": c.total,
            "successful_executions": c.successful,
            "failed_executions": c.failed,
            "cache_hits": c.cache_hits,
            "avg_execution_time_ms": round(c.time_ms / c.total, 3) if c.total else 0.0,
            "total_tokens_used": c.tokens,
            "tokens_saved": self._results.tokens_saved,
            "success_rate": round(100.0 * c.successful / c.total, 2) if c.total else 0.0,
            "cache_hit_rate": round(100.0 * c.cache_hits / c.total, 2) if c.total else 0.0,
            "executions_by_type": {k: dict(v) for k, v in c.by_type.items()},
            "failures_by_code": {code: dict(v) for code, v in c.failures_by_code.items()},
            "cache_stats": self._results.stats(),
            "registry_stats": {
                **registry,
                # The original service's key: its match cache's hit rate (percent).
                "cache_hit_rate": registry["match_cache"]["hit_rate"],
                "fingerprint": self._registry.fingerprint,
                "sync": None if self.sync_stats is None else self.sync_stats(),
            },
            "router_stats": self._router.get_stats(),
            "audit_stats": self._audit.stats(),
            "admission_stats": self._admission.stats(),
            # This worker's pool: get_pool_stats() run from another process cannot see a
            # server's pool, /api/v1/stats can.
            "database_stats": self.pool_stats(),
            "recall_index_stats": None if self.recall_index_stats is None
            else self.recall_index_stats(),
            "performance": self.performance(),
        }

    async def health(self, *, probe_database: bool = True,
                     database_timeout: float | None = None) -> HealthReport:
        """Probe the database (unless told not to) and Redis.

        ``database_timeout`` (seconds) bounds the database probe; by default it is 60% of
        the time the running execution has left (comprehensive mode runs the health pattern
        within the hybrid budget), or of TMWS_PATTERN_INFRA_TIMEOUT outside one, so that the
        report is made in time.
        """
        engine = EngineHealth(patterns=len(self._registry), version=__version__)
        if probe_database:
            if database_timeout is None:
                budget = request_budget.get()
                left = (budget.deadline - time.monotonic() if budget is not None
                        else self._settings.pattern_infra_timeout / 1000)
                database_timeout = round(max(0.6 * left, 0.001), 3)
            ok = await self._database.ping(timeout=database_timeout)
            database = DatabaseHealth(
                status="ok" if ok else "unavailable", pool=self.pool_stats(),
                reason=None if ok else f"no answer to a probe within {database_timeout:g} s")
        else:
            database = DatabaseHealth(status="not_probed", pool=self.pool_stats(),
                                      reason="fast mode never touches the database")
        cache = self._results.cache
        redis = await cache.ping()
        cache_health = CacheHealth(
            status="ok" if redis.usable else "degraded",
            local="enabled" if self._settings.cache_enabled else "disabled",
            redis=redis.state, redis_error=redis.error, circuit=cache.circuit)
        return HealthReport.of(engine, database, cache_health)


def _nearest_rank(ordered: Sequence[float], quantile: str) -> float | None:
    if not ordered:
        return None
    rank = math.ceil(int(quantile[1:]) / 100 * len(ordered))
    return round(ordered[max(rank, 1) - 1], 3)
