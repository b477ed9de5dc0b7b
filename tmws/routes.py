"""The HTTP routes: thin msgspec layers over the engine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST

from tmws import __version__
from tmws.engine import PatternExecutionEngine
from tmws.errors import InvalidRequestError
from tmws.http import HTTPError, Request
from tmws.metrics import ExecutionMetrics, exposition
from tmws.models import ExecutionMode

__all__ = ["CONTENT_TYPES", "ROUTES", "ExecuteRequest", "Route", "RouteRequest"]


class ExecuteRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/execute``."""

    query: str
    execution_mode: str | None = None
    context: dict[str, Any] | None = None
    use_cache: bool = True


class RouteRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/route``."""

    query: str
    execution_mode: str | None = None
    context: dict[str, Any] | None = None


_encoder: Final = msgspec.json.Encoder()
_execute_decoder: Final = msgspec.json.Decoder(ExecuteRequest)
_route_decoder: Final = msgspec.json.Decoder(RouteRequest)
_MODES: Final = ", ".join(m.value for m in ExecutionMode)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    if not body.strip():
        raise HTTPError(400, "empty_body", "the request body is empty; send a JSON object "
                        "with at least a \"query\" field")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise HTTPError(422, "validation_error", _explain(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def _explain(message: str) -> str:
    # msgspec says "Object missing required field `query`" / "... - at `$.use_cache`"
    return message.replace("Object contains unknown field", "unknown field") \
        .replace("Object missing required field", "missing required field")


def _check_query(engine: PatternExecutionEngine, query: str) -> None:
    if not query.strip():
        raise HTTPError(422, "empty_query", "query is empty - at `$.query`")
    limit = engine.settings.max_query_length
    if len(query) > limit:
        raise HTTPError(413, "query_too_long",
                        f"query is {len(query)} characters; the limit is {limit} "
                        "(TMWS_MAX_QUERY_LENGTH)")


def _check_mode(mode: str | None) -> None:
    if mode is not None and mode not in ExecutionMode._value2member_map_:
        raise HTTPError(422, "unknown_mode",
                        f"unknown execution_mode {mode!r}; use one of: {_MODES} - at "
                        "`$.execution_mode`")


async def execute(engine: PatternExecutionEngine, request: Request) -> tuple[int, bytes]:
    body = _decode(_execute_decoder, await request.json_body())
    _check_query(engine, body.query)
    _check_mode(body.execution_mode)
    try:
        result = await engine.execute(body.query, body.execution_mode, body.context,
                                      body.use_cache)
    except InvalidRequestError as exc:
        raise HTTPError(422, "invalid_request", str(exc)) from None
    return 200, _encoder.encode(result)


async def route(engine: PatternExecutionEngine, request: Request) -> tuple[int, bytes]:
    body = _decode(_route_decoder, await request.json_body())
    _check_query(engine, body.query)
    _check_mode(body.execution_mode)
    mode = body.execution_mode or engine.settings.pattern_default_mode
    decision = await engine.router.route(body.query.strip(), mode, body.context)
    return 200, _encoder.encode(decision)


async def stats(engine: PatternExecutionEngine, request: Request) -> tuple[int, bytes]:
    return 200, _encoder.encode(engine.get_stats())


async def health(engine: PatternExecutionEngine, request: Request) -> tuple[int, bytes]:
    """Liveness: the process answers."""
    return 200, _encoder.encode({"status": "ok", "version": __version__})


async def ready(engine: PatternExecutionEngine, request: Request) -> tuple[int, bytes]:
    """The guide's health check: pattern engine, database, Redis; 503 unless all are ok."""
    report = await engine.health()
    redis = report["cache"]["redis"]
    checks: dict[str, Any] = {
        "pattern_engine": report["engine"]["status"] == "ok",
        "database": report["database"]["status"] == "ok",
        # Not configured is fine: the service runs on its local cache.
        "redis": redis in ("ok", "not configured"),
    }
    if redis.startswith("unavailable"):
        checks["redis_error"] = redis
    if not checks["database"]:
        checks["database_error"] = report["database"]["status"]
    checks["healthy"] = all(checks[k] for k in ("pattern_engine", "database", "redis"))
    return (200 if checks["healthy"] else 503), _encoder.encode(checks)


async def metrics(engine: PatternExecutionEngine, request: Request) -> tuple[int, bytes]:
    """Prometheus exposition (text format 0.0.4)."""
    ExecutionMetrics.publish_hit_rates(engine.cache_hit_rates())
    return 200, exposition()


Route = Callable[[PatternExecutionEngine, Request], Awaitable[tuple[int, bytes]]]

ROUTES: Final[dict[str, dict[str, Route]]] = {
    "/api/v1/execute": {"POST": execute},
    "/api/v1/route": {"POST": route},
    "/api/v1/stats": {"GET": stats},
    "/health": {"GET": health},
    "/health/ready": {"GET": ready},
    "/metrics": {"GET": metrics},
}
# Routes whose body is not JSON.
CONTENT_TYPES: Final = {"/metrics": CONTENT_TYPE_LATEST.encode()}
