"""``tmws mcp`` over stdio, spawned by the SDK's client: the principal it is started as,
every tool, scopes, namespaces, bad arguments, its command line and a database outage."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import SECRET, make_settings, scratch_database
from tests.fix_mcp import mcp_stdio
from tests.fix_server import server_env
from tests.mcp.test_http import ADMIN_TOOLS, AGENT_TOOLS, error_of, ok
from tmws.auth import SCOPES, TokenAuthority
from tmws.database import EmbeddedPostgres, upgrade


def fresh() -> str:
    return f"stdio-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
async def stdio_database(database_url: str) -> AsyncIterator[str]:
    async with scratch_database(database_url, migrate=make_settings(database_url)) as url:
        yield url


async def test_an_agent_namespace_round_trip(stdio_database: str, redis_url: str) -> None:
    namespace = fresh()
    async with mcp_stdio(stdio_database, redis_url, "--namespace", namespace) as client:
        assert {t.name for t in (await client.list_tools()).tools} == AGENT_TOOLS
        stored = ok(await client.call_tool("store_memory", {
            "content": "the release train leaves on thursdays", "tags": ["release"]}))
        assert stored["namespace"] == namespace
        got = ok(await client.call_tool("get_memory", {"id": stored["id"]}))
        assert got["content"] == "the release train leaves on thursdays"
        recalled = ok(await client.call_tool("recall_memories", {"query": "release train"}))
        assert [r["id"] for r in recalled["results"]] == [stored["id"]]
        executed = ok(await client.call_tool("execute", {"query": "recall memories about "
                                                                  "the release train"}))
        assert executed["success"] is True
        assert executed["metadata"]["namespace"] == namespace
        assert ok(await client.call_tool("explain_route", {"query": "database health "
                                                                    "status"}))["pattern_type"]
        assert ok(await client.call_tool("list_patterns", {}))["count"] > 0
        assert ok(await client.call_tool("delete_memory", {"id": stored["id"]})) == {
            "deleted": stored["id"]}
        # bad arguments: a tool error naming the field, nothing stored
        error = error_of(await client.call_tool("store_memory", {"content": "x",
                                                                 "visibility": "public"}))
        assert error["code"] == "validation_error" and "`$.visibility`" in error["message"]
        assert ok(await client.call_tool("recall_memories", {}))["count"] == 0


async def test_scopes_and_namespaces(stdio_database: str, redis_url: str) -> None:
    owner, other = fresh(), fresh()
    async with mcp_stdio(stdio_database, redis_url, "--namespace", owner) as writer, \
            mcp_stdio(stdio_database, redis_url, "--namespace", other, "--scopes",
                      "execute,memories:read") as reader:
        assert {t.name for t in (await reader.list_tools()).tools} == {
            "execute", "explain_route", "recall_memories", "get_memory", "list_patterns"}
        assert error_of(await reader.call_tool("store_memory", {"content": "no"}))["code"] == \
            "insufficient_scope"
        private = ok(await writer.call_tool("store_memory", {"content": "owner's secret"}))
        assert error_of(await reader.call_tool("get_memory", {"id": private["id"]}))[
            "code"] == "memory_not_found"
        assert error_of(await reader.call_tool("execute", {
            "query": "recall memories about secrets", "context": {"namespace": owner}}))[
            "code"] == "namespace_forbidden"
        assert ok(await reader.call_tool("recall_memories", {"query": "secret"}))[
            "count"] == 0


async def test_a_token_with_patterns_admin(stdio_database: str, redis_url: str) -> None:
    token = TokenAuthority(SECRET, 60).create(fresh(), SCOPES)
    async with mcp_stdio(stdio_database, redis_url, "--token", token,
                         extra_env={"TMWS_SECRET_KEY": SECRET}) as admin:
        assert {t.name for t in (await admin.list_tools()).tools} == AGENT_TOOLS | ADMIN_TOOLS
        report = ok(await admin.call_tool("evaluate_patterns", {"labelled": [
            {"expected": "NONE", "query": "zxqv plorb"}]}))
        assert report["accuracy"] == 1.0


@pytest.mark.parametrize(("args", "message"), [
    (["--namespace", "no spaces"], "--namespace must be 1 to 128 characters"),
    (["--namespace", "a", "--scopes", "execute", "root"], "unknown scope 'root'"),
    (["--token", "not.a.token"], "the token is malformed"),
    (["--token", "x", "--scopes", "execute"], "--scopes goes with --namespace"),
    ([], "one of the arguments --namespace --token is required"),
])
def test_command_line_errors(args: list[str], message: str, database_url: str) -> None:
    env = server_env({"TMWS_DATABASE_URL": database_url, "TMWS_SECRET_KEY": SECRET})
    run = subprocess.run([sys.executable, "-m", "tmws", "mcp", *args], env=env,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
    assert run.stdout == ""


async def test_an_outage_is_a_tool_error_and_the_server_keeps_running(
        tmp_path: Path, redis_url: str) -> None:
    embedded = EmbeddedPostgres(tmp_path / "pg")
    conninfo = await asyncio.to_thread(embedded.start)
    try:
        await upgrade(conninfo)
        async with mcp_stdio(conninfo, redis_url, "--namespace", fresh()) as client:
            ok(await client.call_tool("store_memory", {"content": "before"}))
            await asyncio.to_thread(embedded.stop)
            error = error_of(await client.call_tool("store_memory", {"content": "during"}))
            assert error["code"] in ("database_unavailable", "overloaded"), error
            error = error_of(await client.call_tool("get_memory", {"id": 1}))
            assert error["code"] in ("database_unavailable", "overloaded"), error
            assert ok(await client.call_tool("list_patterns", {}))["count"] > 0
            assert {t.name for t in (await client.list_tools()).tools} == AGENT_TOOLS
    finally:
        await asyncio.to_thread(embedded.stop)
