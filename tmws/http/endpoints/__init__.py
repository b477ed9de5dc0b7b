"""HTTP endpoints: each takes the engine and a request and returns a Response."""

from tmws.http.endpoints.execution import execute, route
from tmws.http.endpoints.memories import create_memory, delete_memory, get_memory, search_memories
from tmws.http.endpoints.patterns import (
    delete_pattern,
    evaluate_patterns,
    get_pattern,
    list_patterns,
    register_pattern,
    reload_patterns,
)
from tmws.http.endpoints.system import (
    clear_cache,
    health,
    health_detail,
    metrics,
    openapi,
    ready,
    stats,
)
from tmws.http.endpoints.verification import verify

__all__ = [
    "clear_cache",
    "create_memory",
    "delete_memory",
    "delete_pattern",
    "evaluate_patterns",
    "execute",
    "get_memory",
    "get_pattern",
    "health",
    "health_detail",
    "list_patterns",
    "metrics",
    "openapi",
    "ready",
    "register_pattern",
    "reload_patterns",
    "route",
    "search_memories",
    "stats",
    "verify",
]
