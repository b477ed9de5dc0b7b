"""MCP over Streamable HTTP at /mcp of a served tmws (2 Granian workers, auth, rate limits),
with the SDK's client: tools, schemas, scopes, namespaces, bad arguments, audit, metrics,
rate limits and a database outage."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import psycopg
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import DEFAULT_NEGOTIATED_VERSION
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tests.conftest import SECRET
from tests.fix_mcp import mcp_http
from tests.fix_server import Served, start_server, stop_server
from tmws.auth import SCOPES, TokenAuthority
from tmws.database import EmbeddedPostgres, upgrade
from tmws.inputs import MemoryInput
from tmws.mcp.tools import TOOLS, input_schema

AGENT_TOOLS = {"execute", "explain_route", "store_memory", "recall_memories", "get_memory",
               "delete_memory", "list_patterns"}
ADMIN_TOOLS = {"register_pattern", "reload_patterns", "evaluate_patterns"}


@pytest.fixture(params=["legacy", "auto"], ids=["handshake-era", "2026-era"])
def era(request: pytest.FixtureRequest) -> str:
    """The client's protocol: the initialize handshake (tools/call answered by tmws's own
    single-exchange path) or 2026-07-28 (the SDK's single-exchange entry)."""
    mode: str = request.param
    return mode


def fresh() -> str:
    return f"mcp-{uuid.uuid4().hex[:10]}"


def error_of(result: types.CallToolResult) -> dict[str, Any]:
    assert result.is_error, result
    assert result.structured_content is not None
    error: dict[str, Any] = result.structured_content["error"]
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    assert text.text == f"{error['code']}: {error['message']}"
    return error


def ok(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert isinstance(result.content[0], types.TextContent) and result.content[0].text
    structured: dict[str, Any] = result.structured_content
    return structured


async def test_tools_listed_by_scope_with_the_api_schemas(mcp_served: Served, era: str) -> None:
    async with mcp_http(mcp_served, fresh(), mode=era) as agent:
        listed = {tool.name: tool for tool in (await agent.list_tools()).tools}
    assert set(listed) == AGENT_TOOLS
    by_name = {tool.name: tool for tool in TOOLS}
    for name, tool in listed.items():
        assert tool.input_schema == input_schema(by_name[name].arguments), name
        assert tool.input_schema["type"] == "object"
        assert tool.description
    store = listed["store_memory"].input_schema
    assert store == input_schema(MemoryInput)
    assert store["required"] == ["content"] and store["additionalProperties"] is False
    assert store["properties"]["importance"] == {
        "type": "number", "minimum": 0.0, "maximum": 1.0, "default": 0.5}
    assert listed["recall_memories"].input_schema["properties"]["limit"]["maximum"] == 100
    assert listed["execute"].input_schema["properties"]["execution_mode"]["anyOf"]
    assert listed["recall_memories"].annotations is not None
    assert listed["recall_memories"].annotations.read_only_hint is True
    async with mcp_http(mcp_served, fresh(), *SCOPES, mode=era) as admin:
        assert {t.name for t in (await admin.list_tools()).tools} == AGENT_TOOLS | ADMIN_TOOLS
    async with mcp_http(mcp_served, fresh(), "execute", "memories:read", mode=era) as reader:
        assert {t.name for t in (await reader.list_tools()).tools} == {
            "execute", "explain_route", "recall_memories", "get_memory", "list_patterns"}


async def test_every_agent_tool_round_trip(mcp_served: Served, era: str) -> None:
    namespace = fresh()
    async with mcp_http(mcp_served, namespace, mode=era) as client:
        stored = ok(await client.call_tool("store_memory", {
            "content": "the staging database moved to eu-west-3", "tags": ["Infra", "db"],
            "importance": 0.9, "metadata": {"ticket": 42}}))
        assert stored["namespace"] == namespace and stored["tags"] == ["db", "infra"]
        memory = stored["id"]
        got = ok(await client.call_tool("get_memory", {"id": memory}))
        assert got["content"] == "the staging database moved to eu-west-3"
        assert got["metadata"] == {"ticket": 42}
        recalled = ok(await client.call_tool("recall_memories", {"query": "staging database"}))
        assert [r["id"] for r in recalled["results"]] == [memory]
        assert ok(await client.call_tool("recall_memories", {"tags": ["db"]}))["count"] == 1
        assert ok(await client.call_tool(
            "recall_memories", {"tags": ["db"], "min_importance": 0.95}))["count"] == 0
        assert ok(await client.call_tool(
            "recall_memories", {"days": 1, "min_importance": 0.5}))["count"] == 1
        route = ok(await client.call_tool("explain_route",
                                          {"query": "recall memories about staging"}))
        assert route["pattern_type"] == "memory"
        executed = ok(await client.call_tool("execute", {
            "query": "recall memories about staging", "execution_mode": "balanced"}))
        assert executed["success"] is True and executed["pattern_name"]
        assert executed["metadata"]["namespace"] == namespace
        patterns = ok(await client.call_tool("list_patterns", {"pattern_type": "memory"}))
        assert patterns["count"] == len(patterns["patterns"]) > 0
        assert {p["pattern_type"] for p in patterns["patterns"]} == {"memory"}
        assert ok(await client.call_tool("delete_memory", {"id": memory})) == {"deleted": memory}
        assert error_of(await client.call_tool("get_memory", {"id": memory})) == {
            "code": "memory_not_found",
            "message": f"no memory {memory} visible to this namespace"}
        assert error_of(await client.call_tool("delete_memory", {"id": memory}))["code"] == \
            "memory_not_found"


async def test_a_read_only_token_cannot_store(mcp_served: Served, era: str) -> None:
    namespace = fresh()
    async with mcp_http(mcp_served, namespace, "execute", "memories:read", mode=era) as reader:
        error = error_of(await reader.call_tool("store_memory", {"content": "not allowed"}))
        assert error == {"code": "insufficient_scope",
                         "message": "this token lacks the memories:write scope; mint one "
                                    "with `tmws token create --scopes memories:write`"}
        # execute routes to the store handler, whose capabilities need memories:write too
        refused = await reader.call_tool("execute", {
            "query": "remember that the deploy is frozen",
            "context": {"content": "the deploy is frozen"}})
        assert error_of(refused)["code"] == "insufficient_scope"
        assert error_of(await reader.call_tool("register_pattern", {
            "name": "x", "pattern_type": "memory", "trigger_pattern": "x"}))["code"] == \
            "insufficient_scope"
        recent = ok(await reader.call_tool("recall_memories", {"limit": 100}))["results"]
        assert namespace not in {memory["namespace"] for memory in recent}


async def test_a_call_never_sees_another_namespace(mcp_served: Served, era: str) -> None:
    alice, bob = fresh(), fresh()
    async with mcp_http(mcp_served, alice, mode=era) as a, mcp_http(mcp_served, bob, mode=era) as b:
        secret = ok(await a.call_tool("store_memory", {"content": "alice's launch code 7"}))
        shared = ok(await a.call_tool("store_memory", {"content": "alice shares the wiki",
                                                       "visibility": "shared"}))
        assert error_of(await b.call_tool("get_memory", {"id": secret["id"]}))["code"] == \
            "memory_not_found"
        assert error_of(await b.call_tool("delete_memory", {"id": shared["id"]}))["code"] == \
            "memory_not_found"
        ids = {r["id"] for r in ok(await b.call_tool(
            "recall_memories", {"query": "alice launch code wiki", "limit": 100}))["results"]}
        assert secret["id"] not in ids
        forbidden = error_of(await b.call_tool("execute", {
            "query": "recall memories about launch codes", "context": {"namespace": alice}}))
        assert forbidden["code"] == "namespace_forbidden"
        assert alice in forbidden["message"] and bob in forbidden["message"]
        own = await b.read_resource(f"tmws://memories/{bob}/recent")
        assert isinstance(own.contents[0], types.TextResourceContents)
        # readable by bob: alice's shared memory, never her private one
        assert "alice shares the wiki" in own.contents[0].text
        assert "launch code" not in own.contents[0].text
        with pytest.raises(MCPError, match=r"^namespace_forbidden: this token acts for"):
            await b.read_resource(f"tmws://memories/{alice}/recent")
        with pytest.raises(MCPError, match=r"^resource_not_found: no resource"):
            await b.read_resource("tmws://nothing")
        mine = await a.read_resource(f"tmws://memories/{alice}/recent")
        assert isinstance(mine.contents[0], types.TextResourceContents)
        assert "launch code 7" in mine.contents[0].text


async def test_bad_arguments_are_tool_errors_and_store_nothing(mcp_served: Served,
                                                               era: str) -> None:
    namespace = fresh()
    async with mcp_http(mcp_served, namespace, mode=era) as client:
        cases: list[tuple[str, dict[str, Any], str, str]] = [
            ("store_memory", {"content": "x", "importance": 2}, "validation_error",
             "Expected `float` <= 1.0 - at `$.importance`"),
            ("store_memory", {"content": "   "}, "validation_error", "memory content is empty"),
            ("store_memory", {}, "validation_error", "missing required field `content`"),
            ("store_memory", {"content": "x", "namespace": "other"}, "validation_error",
             "unknown field `namespace`"),
            ("store_memory", {"content": "x", "tags": "not-a-list"}, "validation_error",
             "Expected `array`, got `str` - at `$.tags`"),
            ("execute", {"query": ""}, "empty_query", "query is empty - at `$.query`"),
            ("execute", {"query": "x", "execution_mode": "turbo"}, "unknown_mode",
             "unknown execution_mode; use one of: fast, balanced, comprehensive - at "
             "`$.execution_mode`"),
            ("get_memory", {"id": 0}, "validation_error", "Expected `int` >= 1 - at `$.id`"),
            ("recall_memories", {"limit": 1000}, "validation_error",
             "Expected `int` <= 100 - at `$.limit`"),
            ("no_such_tool", {}, "unknown_tool", "no tool named 'no_such_tool'"),
        ]
        for tool, arguments, code, message in cases:
            error = error_of(await client.call_tool(tool, arguments))
            assert error["code"] == code, (tool, arguments, error)
            assert message in error["message"], (tool, arguments, error)
        recent = ok(await client.call_tool("recall_memories", {"limit": 100}))["results"]
        assert namespace not in {memory["namespace"] for memory in recent}


async def test_admin_tools(mcp_served: Served, era: str) -> None:
    async with mcp_http(mcp_served, fresh(), *SCOPES, mode=era) as admin:
        name = f"mcp_{uuid.uuid4().hex[:8]}"
        registered = ok(await admin.call_tool("register_pattern", {
            "name": name, "pattern_type": "infrastructure", "priority": 1000,
            "trigger_pattern": rf"\b{name}\b"}))
        assert registered["name"] == name
        assert error_of(await admin.call_tool("register_pattern", {
            "name": name, "pattern_type": "infrastructure",
            "trigger_pattern": "x"}))["code"] == "pattern_exists"
        assert error_of(await admin.call_tool("register_pattern", {
            "name": f"{name}2", "pattern_type": "infrastructure",
            "trigger_pattern": "(?=look)"}))["code"] == "invalid_pattern"
        route = ok(await admin.call_tool("explain_route", {"query": f"run {name} now"}))
        assert route["pattern_name"] == name
        report = ok(await admin.call_tool("evaluate_patterns", {"labelled": [
            {"expected": name, "query": f"please {name}"}]}))
        assert report["accuracy"] == 1.0
        reloaded = ok(await admin.call_tool("reload_patterns", {}))
        assert reloaded["patterns"] > 0
        assert error_of(await admin.call_tool("evaluate_patterns", {"labelled": [
            {"expected": name, "query": "x"}]}))["code"] == "unknown_label"


async def test_resources(mcp_served: Served, era: str) -> None:
    async with mcp_http(mcp_served, fresh(), mode=era) as client:
        resources = (await client.list_resources()).resources
        assert [str(r.uri) for r in resources] == ["tmws://patterns"]
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["tmws://memories/{namespace}/recent"]
        library = await client.read_resource("tmws://patterns")
        content = library.contents[0]
        assert isinstance(content, types.TextResourceContents)
        assert '"patterns":[' in content.text and '"fingerprint"' in content.text


def test_no_token_is_refused_as_by_the_api(mcp_served: Served) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    response = httpx.post(f"{mcp_served.base}/mcp", json=body)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_missing"
    assert response.headers["www-authenticate"].startswith("Bearer")
    forged = TokenAuthority("another-secret-0123456789-abcdefghijkl", 60).create("x", SCOPES)
    response = httpx.post(f"{mcp_served.base}/mcp", json=body,
                          headers={"authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_invalid"


async def test_calls_are_audited_and_counted(mcp_served: Served, era: str) -> None:
    namespace = fresh()
    async with mcp_http(mcp_served, namespace, mode=era) as client:
        stored = ok(await client.call_tool("store_memory", {"content": "audited"}))
        error_of(await client.call_tool("get_memory", {"id": 0}))
    assert mcp_served.database_url is not None
    deadline = time.monotonic() + 20  # the audit writer flushes in the background
    rows: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline and not rows:
        async with await psycopg.AsyncConnection.connect(mcp_served.database_url) as conn:
            rows = await (await conn.execute(
                "SELECT action, target, outcome FROM audit_log WHERE actor = %s",
                (namespace,))).fetchall()
        await asyncio.sleep(0.2)
    assert rows == [("memory.store", str(stored["id"]), "success")]
    metrics = httpx.get(f"{mcp_served.base}/metrics").text
    assert 'tmws_mcp_tool_calls_total{tool="store_memory"}' in metrics
    assert 'tmws_mcp_tool_errors_total{code="validation_error",tool="get_memory"}' in metrics
    assert 'tmws_mcp_tool_duration_seconds_bucket{le="0.05",tool="store_memory"}' in metrics


@pytest.mark.parametrize("version", [None, *HANDSHAKE_PROTOCOL_VERSIONS])
def test_a_raw_handshake_era_call_is_a_valid_answer_of_its_version(
        mcp_served: Served, version: str | None) -> None:
    """What a client that never ran the SDK sends: one POST, no session, maybe a version."""
    headers = {**mcp_served.headers(fresh()), "accept": "application/json, text/event-stream"}
    if version is not None:
        headers["mcp-protocol-version"] = version
    call = {"jsonrpc": "2.0", "id": "call-7", "method": "tools/call",
            "params": {"name": "execute", "arguments": {"query": "check redis health"}}}
    response = httpx.post(f"{mcp_served.base}/mcp", json=call, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["ratelimit-remaining"]) >= 0
    answer = types.JSONRPCResponse.model_validate_json(response.content)
    assert answer.id == "call-7"
    expected = serialize_server_result("tools/call", version or DEFAULT_NEGOTIATED_VERSION,
                                       answer.result)
    assert answer.result == expected  # nothing outside the version's result surface
    result = types.CallToolResult.model_validate(answer.result)
    assert not result.is_error and result.structured_content is not None
    assert result.structured_content["pattern_name"] == "health_check"
    # what this path cannot take as it is, the SDK answers (its errors, its statuses)
    for body, status, code in (
            ({**call, "params": {"arguments": {}}}, 200, types.INVALID_PARAMS),
            ({**call, "method": "tools/nonexistent"}, 200, types.METHOD_NOT_FOUND)):
        response = httpx.post(f"{mcp_served.base}/mcp", json=body, headers=headers, timeout=30)
        assert response.status_code == status, response.text
        error = types.JSONRPCError.model_validate_json(response.content)
        assert error.id == "call-7" and error.error.code == code, error
    refused = httpx.post(f"{mcp_served.base}/mcp", json=call, timeout=30,
                         headers={**headers, "accept": "text/html"})
    assert refused.status_code == 406
    notification = {k: v for k, v in call.items() if k != "id"}
    assert httpx.post(f"{mcp_served.base}/mcp", json=notification, headers=headers,
                      timeout=30).status_code == 202


@pytest.fixture
def fragile(tmp_path: Path, redis_url: str) -> Iterator[tuple[EmbeddedPostgres, Served]]:
    """A served instance on a PostgreSQL of its own, with a small rate limit."""
    embedded = EmbeddedPostgres(tmp_path / "pg")
    conninfo = embedded.start()
    asyncio.run(upgrade(conninfo))
    process, base = start_server({
        "TMWS_DATABASE_URL": conninfo, "TMWS_WORKERS": "2", "TMWS_DB_MAX_CONNECTIONS": "4",
        "TMWS_REDIS_URL": redis_url, "TMWS_AUTH_ENABLED": "true", "TMWS_SECRET_KEY": SECRET,
        "TMWS_RATE_LIMIT_ENABLED": "true", "TMWS_RATE_LIMIT_REQUESTS": "20",
        "TMWS_RATE_LIMIT_PERIOD": "60"}, tmp_path, log=tmp_path / "server.log")
    try:
        yield embedded, Served(base, tmp_path / "server.log", TokenAuthority(SECRET, 60))
    finally:
        stop_server(process)
        embedded.stop()


async def test_outage_is_a_tool_error_and_rate_limits_apply(
        fragile: tuple[EmbeddedPostgres, Served]) -> None:
    embedded, served = fragile
    namespace = fresh()
    async with mcp_http(served, namespace) as client:
        ok(await client.call_tool("store_memory", {"content": "before the outage"}))
        await asyncio.to_thread(embedded.stop)
        for tool, arguments in (("store_memory", {"content": "during the outage"}),
                                ("recall_memories", {"query": "outage"})):
            error = error_of(await client.call_tool(tool, arguments))
            assert error["code"] in ("database_unavailable", "overloaded"), error
        # the server keeps answering what needs no database
        assert ok(await client.call_tool("list_patterns", {}))["count"] > 0
        assert {t.name for t in (await client.list_tools()).tools} == AGENT_TOOLS
    assert not served.errors_logged()
    # the rate limit counts /mcp requests per namespace, as for the API
    limited = fresh()
    async with mcp_http(served, limited) as client:
        ok(await client.call_tool("list_patterns", {}))
    headers = {**served.headers(limited), "accept": "application/json, text/event-stream"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx.AsyncClient(base_url=served.base, headers=headers) as raw:
        answers = [await raw.post("/mcp", json=body) for _ in range(22)]
        refused = await raw.post("/mcp", json=body)
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) >= 1 and statuses[-1] == 429, statuses
    # an answered /mcp request carries the counts as any API response does
    answered = answers[statuses.index(200)]
    assert answered.headers["content-type"].startswith("application/json")
    assert int(answered.headers["ratelimit-limit"]) == int(answered.headers["x-ratelimit-limit"])
    assert 0 <= int(answered.headers["ratelimit-remaining"]) < int(
        answered.headers["ratelimit-limit"])
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
