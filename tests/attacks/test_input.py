"""Hostile bodies, paths and numbers against a served instance: a clear 4xx naming what
was wrong, nothing stored half-way, never a 500 — and one tenant's data never breaks
another tenant's reads."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from tests.fix_server import Served


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def ns() -> str:
    return f"attack-{uuid.uuid4().hex[:10]}"


def post(served: Served, path: str, body: str | bytes, headers: dict[str, str]
         ) -> httpx.Response:
    return httpx.post(served.base + path, content=body, timeout=30,
                      headers={"content-type": "application/json", **headers})


def owned(served: Served, namespace: str) -> list[dict[str, Any]]:
    """The memories ``namespace`` owns (searches also return everyone's shared ones)."""
    found = post(served, "/api/v1/memories/search", '{"limit": 100}',
                 served.headers(namespace)).json()["results"]
    return [m for m in found if m["namespace"] == namespace]


READERS: list[tuple[str, dict[str, Any]]] = [
    ("/api/v1/memories/search", {"query": "probe"}),
    ("/api/v1/memories/search", {}),
    ("/api/v1/memories/search", {"min_importance": 0.0}),
    ("/api/v1/memories/search", {"query": "probe", "method": "vector"}),
    ("/api/v1/execute", {"query": "recall memories about probe"}),
    ("/api/v1/execute", {"query": "show recent memories"}),
    ("/api/v1/execute", {"query": "list important memories"}),
    ("/api/v1/execute", {"query": "find similar probe incidents"}),
]


def every_reader_answers(served: Served, namespace: str) -> None:
    headers = served.headers(namespace)
    for path, body in READERS:
        response = post(served, path, json.dumps({**body, "use_cache": False}
                                                 if path.endswith("execute") else body),
                        headers)
        assert response.status_code == 200, (path, body, response.text)


@pytest.mark.parametrize("depth", [33, 974, 975, 5000])
def test_deeply_nested_shared_metadata_is_refused_and_stores_nothing(
        armoured: Served, depth: int) -> None:
    """Finding 1: a 2 KB shared memory nested ~975 deep broke every namespace's reads (and
    at 974 the POST answered 500 after committing the row)."""
    owner, other = ns(), ns()
    body = ('{"content":"probe poison","visibility":"shared","metadata":{"x":'
            + nested(depth) + "}}")
    response = post(armoured, "/api/v1/memories", body, armoured.headers(owner))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "json_too_deep" and "TMWS_MAX_JSON_DEPTH" in error["message"]
    via_execute = post(armoured, "/api/v1/execute", json.dumps(
        {"query": "remember probe poison", "context": {"metadata": {"x": json.loads(
            nested(min(depth, 900)))}, "visibility": "shared"}}), armoured.headers(owner))
    assert via_execute.status_code == 400, via_execute.text
    assert owned(armoured, owner) == []  # nothing was stored by either route
    every_reader_answers(armoured, other)


def test_metadata_within_the_limits_round_trips(armoured: Served) -> None:
    owner = ns()
    metadata = {"x": json.loads(nested(29)), "n": 2**70}
    response = post(armoured, "/api/v1/memories", json.dumps(
        {"content": "deep but allowed", "metadata": metadata}), armoured.headers(owner))
    assert response.status_code == 201, response.text
    fetched = httpx.get(f"{armoured.base}/api/v1/memories/{response.json()['id']}",
                        headers=armoured.headers(owner), timeout=10)
    assert fetched.json()["metadata"] == metadata
    too_big = post(armoured, "/api/v1/memories", json.dumps(
        {"content": "x", "metadata": {"blob": "x" * 20_000}}), armoured.headers(owner))
    assert too_big.status_code == 422 and "TMWS_MAX_METADATA_BYTES" in too_big.text


async def test_a_row_too_deep_to_decode_cannot_fail_other_tenants(
        armoured: Served) -> None:
    """A shared row written before the limits existed (here: straight into the table) is
    read with a loader that cannot fail: every other namespace's reads still answer."""
    assert armoured.database_url is not None
    database = armoured.database_url
    poison = '{"x":' + nested(3000) + "}"
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO memories (namespace, content, visibility, metadata)"
            " VALUES ('legacy', 'probe legacy poison', 'shared', %s::jsonb)", (poison,))
    other = ns()
    every_reader_answers(armoured, other)
    found = post(armoured, "/api/v1/memories/search", '{"query": "legacy poison"}',
                 armoured.headers(other)).json()["results"]
    assert found and "tmws_unreadable" in found[0]["metadata"]


@pytest.mark.parametrize("path", ["/api/v1/execute", "/api/v1/route", "/api/v1/memories",
                                  "/api/v1/memories/search", "/api/v1/patterns",
                                  "/api/v1/patterns/eval", "/api/v1/patterns/reload"])
@pytest.mark.parametrize("depth", [980, 20_000])
def test_any_body_nested_too_deep_is_400(armoured: Served, path: str, depth: int) -> None:
    """Finding 2: any body nested >= 980 deep raised RecursionError in decoding (500)."""
    headers = armoured.headers(ns(), "execute", "memories:read", "memories:write",
                               "patterns:admin")
    response = post(armoured, path, '{"query": "x", "context": {"a": ' + nested(depth) + "}}",
                    headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "json_too_deep"


@pytest.mark.parametrize("segment", ["%C2%B2", "%EF%BC%94", "%D9%A4", "9" * 4301, "0", "-4",
                                     "9223372036854775808", "4.0", "1e3", "%20", "%00"])
def test_memory_ids_that_are_not_ascii_integers_are_422(armoured: Served, segment: str
                                                        ) -> None:
    """Finding 2: a superscript two and 4,301-digit ids raised ValueError (500); a
    fullwidth four read id 4."""
    headers = armoured.headers(ns())
    for method in ("GET", "DELETE"):
        response = httpx.request(method, f"{armoured.base}/api/v1/memories/{segment}",
                                 headers=headers, timeout=10)
        assert response.status_code == 422, (method, segment, response.text)
        assert "memory id must be an integer" in response.json()["error"]["message"]


@pytest.mark.parametrize(("context", "field"), [
    ({"min_importance": 2**64}, "context.min_importance"),
    ({"importance": 10**400}, "context.importance"),
    ({"importance": -(2**80)}, "context.importance"),
    ({"limit": 10**30}, "context.limit"),
    ({"days": 1e308}, "context.days"),
    ({"tags": ["x" * 129]}, "context.tags[0]"),
    ({"namespace": "a b"}, "namespace"),
])
def test_out_of_range_context_numbers_are_422_naming_the_field(
        armoured: Served, context: dict[str, Any], field: str) -> None:
    """Finding 2: 2**64 overflowed msgpack after the handler ran; a 400-digit importance
    overflowed float() in store_memory. Both were 500s."""
    owner = ns()
    for query in ("list important memories", "remember the probe value"):
        response = post(armoured, "/api/v1/execute",
                        json.dumps({"query": query, "context": context}),
                        armoured.headers(owner))
        assert response.status_code in (403, 422), response.text
        if response.status_code == 422:
            assert field in response.json()["error"]["message"]
    assert owned(armoured, owner) == []


@pytest.mark.parametrize(("field", "value", "named"), [
    ("cache_ttl", 2**62, "TMWS_PATTERN_MAX_CACHE_TTL"),
    ("cache_ttl", 7 * 86400 + 1, "TMWS_PATTERN_MAX_CACHE_TTL"),
    ("cost_tokens", 2**40, "TMWS_PATTERN_MAX_COST_TOKENS"),
    ("cost_tokens", 1_000_001, "TMWS_PATTERN_MAX_COST_TOKENS"),
    ("priority", 2**63, "out of range"),
    # Found by the OpenAPI fuzzer: the shared set is jsonb, which holds no NUL (was a 500).
    ("metadata", {"": {"B\u0000": []}}, "NUL character"),
    ("examples", ["ok", "a\u0000b"], "NUL character"),
])
def test_unbounded_pattern_fields_are_refused(armoured: Served, field: str, value: object,
                                              named: str) -> None:
    """Finding 7: cache_ttl 2**62 made every Redis write fail (and tripped the breaker);
    cost_tokens 2**40 inflated tmws_pattern_tokens_used_total."""
    admin = armoured.headers("ops", "patterns:admin", "execute")
    name = f"bounded_{uuid.uuid4().hex[:8]}"
    response = post(armoured, "/api/v1/patterns", json.dumps(
        {"name": name, "pattern_type": "infrastructure",
         "trigger_pattern": rf"\b{name}\b", field: value}), admin)
    assert response.status_code == 422, response.text
    assert named in response.json()["error"]["message"]
    assert httpx.get(f"{armoured.base}/api/v1/patterns/{name}", headers=admin,
                     timeout=10).status_code == 404


def test_no_500_was_logged(armoured: Served) -> None:
    """Whatever the attacks above sent, the server logged no unhandled error."""
    assert not [e for e in armoured.errors_logged() if "unhandled error" in e]
