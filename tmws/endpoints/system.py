"""Operations endpoints: liveness, readiness, statistics, cache clearing, metrics, the API
description."""

from __future__ import annotations

from ipaddress import ip_address
from typing import TYPE_CHECKING, Final

from prometheus_client import CONTENT_TYPE_LATEST

from tmws import __version__
from tmws.cache import RedisUnavailable
from tmws.endpoints._common import actor, encoder
from tmws.http import HTTPError, Request, Response
from tmws.metrics import ExecutionMetrics, exposition
from tmws.schemas import CacheCleared, Health, Readiness

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["clear_cache", "health", "metrics", "openapi", "ready", "stats"]

_READY_DATABASE_TIMEOUT: Final = 2.0  # seconds
_HEALTH: Final = encoder.encode(Health("ok", __version__))
_PROMETHEUS: Final = CONTENT_TYPE_LATEST.encode()  # as routes.py documents it


async def health(engine: PatternExecutionEngine, request: Request) -> Response:
    """Liveness: the process answers (no dependency is probed)."""
    return Response(200, _HEALTH)


async def ready(engine: PatternExecutionEngine, request: Request) -> Response:
    """The guide's health check: pattern engine, database, Redis; 503 unless all are ok."""
    # Not the health pattern's 30 ms budget: a busy but healthy database must not take the
    # instance out of rotation exactly when it is loaded.
    report = await engine.health(database_timeout=_READY_DATABASE_TIMEOUT)
    redis = report["cache"]["redis"]
    database = report["database"]["status"] == "ok"
    readiness = Readiness(
        pattern_engine=report["engine"]["status"] == "ok",
        database=database,
        # Not configured is fine: the service runs on its local cache.
        redis=redis in ("ok", "not configured"),
        healthy=False,
        database_error=None if database else report["database"]["status"],
        redis_error=redis if redis.startswith("unavailable") else None)
    readiness.healthy = readiness.pattern_engine and readiness.database and readiness.redis
    return Response(200 if readiness.healthy else 503, encoder.encode(readiness))


async def clear_cache(engine: PatternExecutionEngine, request: Request) -> Response:
    """Every cached result goes: Redis's for all instances, this worker's in-process one."""
    who = actor(request)
    try:
        deleted = await engine.cache.clear()
    except RedisUnavailable:
        engine.audit.record(who, "cache.clear", outcome="redis_unavailable")
        raise HTTPError(503, "redis_unavailable",
                        "Redis (TMWS_REDIS_URL) is unreachable: only this worker's "
                        "in-process cache was cleared") from None
    engine.audit.record(who, "cache.clear", outcome="success", detail={"deleted": deleted})
    return Response(200, encoder.encode(CacheCleared(deleted, engine.settings.cache_local_ttl)))


async def stats(engine: PatternExecutionEngine, request: Request) -> Response:
    return Response(200, encoder.encode(engine.get_stats()))


async def metrics(engine: PatternExecutionEngine, request: Request) -> Response:
    """Prometheus exposition (text format 0.0.4), optionally only to some networks."""
    networks = engine.settings.metrics_networks()
    if networks:
        client = request.scope.get("client")
        try:
            address = ip_address(client[0]) if client else None
        except ValueError:  # a Unix socket peer
            address = None
        if address is None or not any(address in network for network in networks):
            raise HTTPError(403, "metrics_forbidden",
                            "this client may not scrape /metrics (TMWS_METRICS_ALLOWED_NETWORKS)")
    ExecutionMetrics.publish_hit_rates(engine.cache_hit_rates())
    return Response(200, exposition(), content_type=_PROMETHEUS)


async def openapi(engine: PatternExecutionEngine, request: Request) -> Response:
    from tmws.openapi import openapi_document

    return Response(200, openapi_document())
