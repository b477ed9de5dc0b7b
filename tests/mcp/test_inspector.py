"""The MCP Inspector's command-line mode (``@modelcontextprotocol/inspector``, a client no
one here wrote, installed by ``make inspector``) listing and calling tmws's tools over
Streamable HTTP and stdio."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import make_settings, scratch_database
from tests.fix_server import Served, server_env
from tests.mcp.test_http import AGENT_TOOLS

INSPECTOR = Path(__file__).resolve().parents[2] / ".cache/mcp-inspector/node_modules/.bin/" \
    "mcp-inspector"


def inspect(tmp: Path, *args: str, status: int = 0) -> Any:
    """Run ``mcp-inspector --cli ARGS``; its JSON answer (``status``: its exit status, 5
    for a tool error)."""
    assert INSPECTOR.exists(), f"{INSPECTOR} is missing: run `make inspector`"
    env = {**server_env({}), "MCP_CATALOG_PATH": str(tmp / "catalog.json")}
    run = subprocess.run(["node", str(INSPECTOR), "--cli", *args], capture_output=True,
                         text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert run.returncode == status, (run.stdout, run.stderr)
    return json.loads(run.stdout)


def test_over_streamable_http(mcp_served: Served, tmp_path: Path) -> None:
    namespace = f"inspector-{uuid.uuid4().hex[:8]}"
    token = mcp_served.headers(namespace)["authorization"]
    target = [f"{mcp_served.base}/mcp", "--transport", "http", "--header",
              f"Authorization: {token}"]
    listed = inspect(tmp_path, *target, "--method", "tools/list", "--strict")
    assert {tool["name"] for tool in listed["tools"]} == AGENT_TOOLS
    stored = inspect(tmp_path, *target, "--method", "tools/call", "--tool-name", "store_memory",
                     "--tool-arg", "content=inspected over http", "importance=0.8")
    assert stored.get("isError") in (None, False), stored
    assert stored["structuredContent"]["namespace"] == namespace
    recalled = inspect(tmp_path, *target, "--method", "tools/call", "--tool-name",
                       "recall_memories", "--tool-arg", "query=inspected")
    assert [r["id"] for r in recalled["structuredContent"]["results"]] == [
        stored["structuredContent"]["id"]]
    refused = inspect(tmp_path, *target, "--method", "tools/call", "--tool-name",
                      "store_memory", "--tool-arg", "importance=3", status=5)
    assert refused["isError"] is True
    assert refused["structuredContent"]["error"]["code"] == "validation_error"


async def test_over_stdio(database_url: str, redis_url: str, tmp_path: Path) -> None:
    async with scratch_database(database_url, migrate=make_settings(database_url)) as url:
        namespace = f"inspector-{uuid.uuid4().hex[:8]}"
        env = server_env({"TMWS_DATABASE_URL": url, "TMWS_REDIS_URL": redis_url})
        passed = [f"{key}={env[key]}" for key in ("TMWS_DATABASE_URL", "TMWS_REDIS_URL",
                                                   "TMWS_LOG_LEVEL", "PYTHONPATH")
                  if key in env]
        options = [*(arg for pair in passed for arg in ("-e", pair)), "--transport", "stdio"]
        # the command after "--", every option before it
        command = ["--", sys.executable, "-m", "tmws", "mcp", "--namespace", namespace]
        listed = inspect(tmp_path, *options, "--method", "tools/list", "--strict", *command)
        assert {tool["name"] for tool in listed["tools"]} == AGENT_TOOLS
        stored = inspect(tmp_path, *options, "--method", "tools/call", "--tool-name",
                         "store_memory", "--tool-arg", "content=inspected over stdio", *command)
        assert stored["structuredContent"]["namespace"] == namespace
        patterns = inspect(tmp_path, *options, "--method", "resources/read", "--uri",
                           "tmws://patterns", *command)
        assert json.loads(patterns["contents"][0]["text"])["count"] > 0
