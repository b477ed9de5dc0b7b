"""The HTTP API: every route, its scope, its types. /openapi.json is generated from this."""

from __future__ import annotations

from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST

from tmws.evaluation import Evaluation
from tmws.http import endpoints
from tmws.http.dispatch import Dispatcher, Route
from tmws.http.schemas import (
    CacheCleared,
    DeletedMemory,
    EvaluationRequest,
    ExecuteRequest,
    Health,
    MemoryCreate,
    MemoryList,
    MemorySearch,
    PatternList,
    PatternRegistration,
    PatternReload,
    PatternReloadRequest,
    Readiness,
    RouteRequest,
)
from tmws.memory import MemoryRecord
from tmws.models import ExecutionResult, PatternDefinition, PatternType, RoutingDecision
from tmws.verify import VerificationReport

__all__ = ["DISPATCHER", "ROUTES"]

_BODY: Final = (400, 413, 415, 422)  # every route with a JSON body can answer these
_CHANGE_HEADERS: Final = (
    ("x-pattern-set-version", "integer", "the group's pattern-set version after the change"),
    ("x-pattern-set-instances", "string",
     "live instances of the group running it, of all live ones (e.g. 2/2)"),
    ("x-pattern-set-visible-everywhere", "boolean",
     "whether every live instance ran the change when this was answered"),
)

ROUTES: Final = (
    Route("POST", "/api/v1/execute", endpoints.execute,
          "Route and execute a query", scope="execute",
          request_type=ExecuteRequest, response_type=ExecutionResult,
          errors=(*_BODY, 503, 504)),
    Route("POST", "/api/v1/route", endpoints.route,
          "Explain where a query would go, without executing it", scope="execute",
          request_type=RouteRequest, response_type=RoutingDecision, errors=_BODY),
    Route("GET", "/api/v1/patterns", endpoints.list_patterns,
          "List the registered patterns", scope="execute", response_type=PatternList,
          errors=(422,),
          query=(("type", "only patterns of this type", tuple(t.value for t in PatternType)),)),
    Route("POST", "/api/v1/patterns", endpoints.register_pattern,
          "Register a pattern for every instance of the group (compiled first; nothing "
          "changes on error)",
          scope="patterns:admin", request_type=PatternRegistration,
          response_type=PatternDefinition, status=201, errors=(*_BODY, 409, 503),
          response_headers=_CHANGE_HEADERS),
    Route("POST", "/api/v1/patterns/reload", endpoints.reload_patterns,
          "Re-read TMWS_PATTERN_CONFIG and make it every instance's whole set (a file without "
          "patterns only with allow_empty)", scope="patterns:admin",
          request_type=PatternReloadRequest, body_required=False,
          response_type=PatternReload, errors=(*_BODY, 503), response_headers=_CHANGE_HEADERS),
    Route("POST", "/api/v1/patterns/eval", endpoints.evaluate_patterns,
          "Route labelled queries (nothing runs): accuracy, precision/recall, abstentions, "
          "confusions", scope="patterns:admin", request_type=EvaluationRequest,
          response_type=Evaluation, errors=(*_BODY, 503)),
    Route("GET", "/api/v1/patterns/{name}", endpoints.get_pattern,
          "Read one pattern", scope="execute", response_type=PatternDefinition,
          errors=(404,)),
    Route("DELETE", "/api/v1/patterns/{name}", endpoints.delete_pattern,
          "Unregister a pattern for every instance of the group", scope="patterns:admin",
          response_type=PatternDefinition, errors=(404, 503), response_headers=_CHANGE_HEADERS),
    Route("POST", "/api/v1/memories", endpoints.create_memory,
          "Store a memory in the caller's namespace", scope="memories:write",
          request_type=MemoryCreate, response_type=MemoryRecord, status=201,
          errors=(*_BODY, 503)),
    Route("POST", "/api/v1/memories/search", endpoints.search_memories,
          "Search the memories readable by the caller", scope="memories:read",
          request_type=MemorySearch, response_type=MemoryList, errors=(*_BODY, 503)),
    Route("GET", "/api/v1/memories/{id}", endpoints.get_memory,
          "Read one memory (whole content)", scope="memories:read",
          response_type=MemoryRecord, errors=(404, 422, 503),
          query=(("namespace", "with auth off: the namespace to read as", ()),)),
    Route("DELETE", "/api/v1/memories/{id}", endpoints.delete_memory,
          "Delete a memory the caller owns", scope="memories:write",
          response_type=DeletedMemory, errors=(404, 422, 503),
          query=(("namespace", "with auth off: the namespace to act as", ()),)),
    Route("POST", "/api/v1/cache/clear", endpoints.clear_cache,
          "Drop every cached result (Redis for all instances; this worker's in-process "
          "cache; other workers' age out within TMWS_CACHE_LOCAL_TTL)",
          scope="patterns:admin", response_type=CacheCleared, errors=(503,)),
    Route("GET", "/api/v1/stats", endpoints.stats,
          "Engine statistics (executions, caches, registry, router)", scope="metrics:read",
          response_type=dict[str, Any]),
    Route("GET", "/api/v1/verify", endpoints.verify,
          "Run the installation checks of `tmws verify` on this instance (its pool, cache and "
          "router): 200 with the report whatever it finds; exit_code 0 ok, 1 warn, 2 fail",
          scope="patterns:admin", response_type=VerificationReport, errors=(422,),
          query=(("execute", "false: skip the executions of one pattern per type",
                  ("true", "false")),)),
    Route("GET", "/health", endpoints.health, "Liveness: the process answers", scope=None,
          response_type=Health, rate_limited=False),
    Route("GET", "/health/live", endpoints.health, "Liveness: the process answers",
          scope=None, response_type=Health, rate_limited=False),
    # Probes carry no token: up/down per dependency only; the details need metrics:read.
    Route("GET", "/health/ready", endpoints.ready,
          "Readiness for probes (no token): pattern engine, database and Redis up or not, "
          "nothing else (503 unless the engine and the database are up; Redis down only "
          "lowers healthy)",
          scope=None, response_type=Readiness, errors=(503,), rate_limited=False),
    Route("GET", "/api/v1/health", endpoints.health_detail,
          "The health check in full: readiness with what is wrong, the engine, "
          "database and cache reports (503 when not ready)", scope="metrics:read",
          response_type=dict[str, Any], errors=(503,)),
    Route("GET", "/metrics", endpoints.metrics, "Prometheus metrics", scope=None,
          content_type=CONTENT_TYPE_LATEST, errors=(403,), rate_limited=False),
    Route("GET", "/openapi.json", endpoints.openapi, "This API description (OpenAPI 3.1)",
          response_type=dict[str, Any], rate_limited=False),
)

DISPATCHER: Final = Dispatcher(ROUTES)
