"""Operations endpoints: liveness, readiness, statistics, cache clearing, metrics, the API
description.

Probes come without credentials (Kubernetes, load balancers, Docker's HEALTHCHECK): liveness
(``/health``, ``/health/live``) and readiness (``/health/ready``) are public and say no more
than up or down per dependency. What is wrong, and versions and pools, are in
``/api/v1/health`` behind ``metrics:read``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from ipaddress import ip_address
from typing import TYPE_CHECKING, Final

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST

from tmws._version import __version__
from tmws.errors import RedisUnavailable
from tmws.http.asgi import HTTPError, Request, Response
from tmws.http.endpoints._common import actor, encoder
from tmws.http.schemas import CacheCleared, Health, Readiness
from tmws.metrics import exposition

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine
    from tmws.health import HealthReport

__all__ = ["clear_cache", "health", "health_detail", "metrics", "openapi", "ready", "stats"]

_READY_DATABASE_TIMEOUT: Final = 2.0  # seconds
# A public readiness answer is reused this long and concurrent probes share one: anyone may
# ask, and each answer costs a database and a Redis round trip.
_READY_REUSE: Final = 1.0  # seconds
_HEALTH: Final = encoder.encode(Health("ok", __version__))
_PROMETHEUS: Final = CONTENT_TYPE_LATEST.encode()  # as routes.py documents it


async def health(engine: PatternExecutionEngine, request: Request) -> Response:
    """Liveness: the process answers (no dependency is probed)."""
    return Response(200, _HEALTH)


async def ready(engine: PatternExecutionEngine, request: Request) -> Response:
    """Public readiness: engine, database, Redis up or not; 503 unless the engine and the
    database are (Redis down only lowers ``healthy``). No error texts, versions or pool
    figures (``/api/v1/health`` has them)."""
    return await _probes.setdefault(engine, _ReadinessProbe()).answer(engine)


async def health_detail(engine: PatternExecutionEngine, request: Request) -> Response:
    """The full health check (deploy/README.md, "Monitoring and Alerts"): the readiness
    booleans with what is wrong, and the engine, database and cache reports; 503 unless
    healthy."""
    readiness, report = await _check(engine)
    body = {**report.to_builtins(), "healthy": readiness.healthy,
            "checks": msgspec.to_builtins(readiness)}
    return Response(200 if readiness.healthy else 503, encoder.encode(body))


async def _check(engine: PatternExecutionEngine) -> tuple[Readiness, HealthReport]:
    # Not the health pattern's 30 ms budget: a busy but healthy database must not take the
    # instance out of rotation exactly when it is loaded.
    report = await engine.health(database_timeout=_READY_DATABASE_TIMEOUT)
    cache = report.cache
    database = report.database.status == "ok"
    # Not configured is fine: the service runs on its local cache.
    redis = cache.redis != "unavailable"
    readiness = Readiness(
        pattern_engine=report.engine.status == "ok",
        database=database,
        redis=redis,
        healthy=False,
        ready=False,
        database_error=None if database else f"unavailable: {report.database.reason}",
        redis_error=None if redis else f"unavailable: {cache.redis_error}")
    readiness.healthy = readiness.pattern_engine and readiness.database and readiness.redis
    # Redis down is a degradation, not an outage: the instance serves from its in-process
    # cache, and a cache outage must not take every instance out of rotation at once.
    readiness.ready = readiness.pattern_engine and readiness.database
    return readiness, report


class _ReadinessProbe:
    """One engine's public readiness: one check at a time, its answer reused briefly."""

    def __init__(self) -> None:
        self._answer: Response | None = None
        self._expires = 0.0
        self._running: asyncio.Future[Response] | None = None

    async def answer(self, engine: PatternExecutionEngine) -> Response:
        if self._answer is not None and time.monotonic() < self._expires:
            return self._answer
        if self._running is not None:
            return await asyncio.shield(self._running)
        running = self._running = asyncio.get_running_loop().create_future()
        try:
            readiness, _ = await _check(engine)
            public = Readiness(readiness.pattern_engine, readiness.database, readiness.redis,
                               readiness.healthy, readiness.ready)  # the booleans only
            answer = Response(200 if public.ready else 503, encoder.encode(public))
            self._answer, self._expires = answer, time.monotonic() + _READY_REUSE
            running.set_result(answer)
            return answer
        except BaseException as exc:
            running.set_exception(exc)
            running.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            self._running = None


_probes: weakref.WeakKeyDictionary[PatternExecutionEngine, _ReadinessProbe] = (
    weakref.WeakKeyDictionary())


async def clear_cache(engine: PatternExecutionEngine, request: Request) -> Response:
    """Every cached result goes: Redis's for all instances, this worker's in-process one."""
    try:
        deleted = await engine.clear_cache(actor=actor(request))
    except RedisUnavailable:
        raise HTTPError(503, "redis_unavailable",
                        "Redis (TMWS_REDIS_URL) is unreachable: only this worker's "
                        "in-process cache was cleared") from None
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
    # The cache hit-rate gauge is computed inside exposition(), from every worker's counters.
    return Response(200, exposition(), content_type=_PROMETHEUS)


async def openapi(engine: PatternExecutionEngine, request: Request) -> Response:
    from tmws.http.openapi import openapi_document

    return Response(200, openapi_document())
