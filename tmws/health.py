"""The health report: what ``engine.health()``, the ``health_check`` pattern and
``GET /api/v1/health`` answer, as types rather than strings to parse.

=========  ======================================================================
engine     ``ok`` with the number of patterns and the version
database   ``ok``, ``unavailable`` (the probe failed or timed out) or ``not_probed``
           (fast mode never touches the database), with the pool's figures
cache      ``ok`` or ``degraded`` (Redis configured but unreachable: results are then
           cached in each worker only); ``redis`` says which, ``redis_error`` why
=========  ======================================================================

``healthy`` is true when nothing is ``unavailable`` or ``degraded``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = ["CacheHealth", "DatabaseHealth", "EngineHealth", "HealthReport", "RedisStatus"]

RedisState = Literal["ok", "not configured", "unavailable"]


class RedisStatus(msgspec.Struct, frozen=True):
    """One Redis ping: ``error`` names why it is unavailable (the exception's type or
    ``circuit open``; never an address or a password)."""

    state: RedisState
    error: str | None = None
    version: str | None = None  # when the ping also asked (tmws verify)

    @property
    def usable(self) -> bool:
        """Not configured counts: the service runs on its in-process cache by design."""
        return self.state != "unavailable"


class EngineHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok"] = "ok"
    patterns: int
    version: str


class DatabaseHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok", "unavailable", "not_probed"]
    pool: dict[str, Any]
    reason: str | None = None


class CacheHealth(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok", "degraded"]
    local: Literal["enabled", "disabled"]
    redis: RedisState
    circuit: str
    redis_error: str | None = None


class HealthReport(msgspec.Struct, frozen=True, kw_only=True):
    healthy: bool
    engine: EngineHealth
    database: DatabaseHealth
    cache: CacheHealth

    @classmethod
    def of(cls, engine: EngineHealth, database: DatabaseHealth, cache: CacheHealth
           ) -> HealthReport:
        healthy = database.status != "unavailable" and cache.status == "ok"
        return cls(healthy=healthy, engine=engine, database=database, cache=cache)

    def failing(self) -> list[str]:
        """The parts that are not healthy, by name."""
        return [name for name, bad in (("database", self.database.status == "unavailable"),
                                       ("cache", self.cache.status != "ok")) if bad]

    def to_builtins(self) -> dict[str, Any]:
        built: dict[str, Any] = msgspec.to_builtins(self)
        return built
