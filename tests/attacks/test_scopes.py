"""What a token may do is what the handler does, not what the pattern's type says."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.fix_server import Served


def ns() -> str:
    return f"scope-{uuid.uuid4().hex[:10]}"


def execute(served: Served, headers: dict[str, str], query: str, **body: Any
            ) -> httpx.Response:
    return httpx.post(f"{served.base}/api/v1/execute", json={"query": query, **body},
                      headers=headers, timeout=30)


@pytest.mark.parametrize("pattern", [
    {"handler": "recall_memory"},
    {"handler": "store_memory"},
    {"handler": "analyze_codebase"},
    {"name_it": "recall_memory"},  # no handler field: the pattern's name picks the handler
])
def test_memory_handlers_behind_infrastructure_patterns_are_refused(
        armoured: Served, pattern: dict[str, str]) -> None:
    """Finding 3: an infrastructure pattern running recall_memory let an execute-only token
    read the namespace's private memories in fast mode, and cached them without the memory
    generation."""
    admin = armoured.headers("ops", "patterns:admin", "execute")
    name = pattern.get("name_it", f"sneaky_{uuid.uuid4().hex[:8]}")
    body = {"name": name, "pattern_type": "infrastructure",
            "trigger_pattern": rf"\bsneak{uuid.uuid4().hex[:6]}\b", "replace": True,
            **({"handler": pattern["handler"]} if "handler" in pattern else {})}
    response = httpx.post(f"{armoured.base}/api/v1/patterns", json=body, headers=admin,
                          timeout=30)
    assert response.status_code == 422, response.text
    assert "never touches memories" in response.json()["error"]["message"]


def test_private_memories_stay_behind_their_scopes(armoured: Served) -> None:
    owner = ns()
    full = armoured.headers(owner)
    stored = execute(armoured, full, "remember the vault code is 4711")
    assert stored.status_code == 200 and stored.json()["success"], stored.text
    execute_only = armoured.headers(owner, "execute")
    for mode in ("fast", "balanced", "comprehensive"):
        for query in ("recall memories about the vault code", "check health"):
            response = execute(armoured, execute_only, query, execution_mode=mode)
            if query == "check health" and mode != "comprehensive":
                assert response.status_code == 200, (mode, response.text)
                assert "4711" not in response.text
                continue
            if mode == "fast":  # fast never routes to memory: never the memory
                assert "4711" not in response.text, (mode, query)
                continue
            assert response.status_code == 403, (mode, query, response.text)
            assert "memories:read" in response.json()["error"]["message"]


@pytest.mark.parametrize("query", ["show engine stats", "count connections",
                                   "calculate the total tokens"])
def test_service_statistics_need_metrics_read(armoured: Served, query: str) -> None:
    """Finding 4: "show engine stats" and "count connections" returned the database, audit
    and registry figures of every tenant to a token with execute alone."""
    owner = ns()
    refused = execute(armoured, armoured.headers(owner, "execute"), query)
    assert refused.status_code == 403, refused.text
    assert "metrics:read" in refused.json()["error"]["message"]
    allowed = execute(armoured, armoured.headers(owner, "execute", "metrics:read"), query)
    assert allowed.status_code == 200 and allowed.json()["success"], allowed.text


def test_cached_results_follow_the_namespace_and_the_writes(armoured: Served) -> None:
    first, second = ns(), ns()
    query = "recall memories about the quarterly rotation"
    assert execute(armoured, armoured.headers(first), "remember the quarterly rotation "
                   "uses key k-1").json()["success"]
    warm = execute(armoured, armoured.headers(first), query).json()
    assert warm["result"]["count"] == 1
    other = execute(armoured, armoured.headers(second), query).json()
    assert other["result"]["count"] == 0 and "k-1" not in str(other)
    assert execute(armoured, armoured.headers(first), "remember the quarterly rotation "
                   "moved to key k-2").json()["success"]
    fresh = execute(armoured, armoured.headers(first), query).json()
    assert not fresh["cache_hit"] and fresh["result"]["count"] == 2
