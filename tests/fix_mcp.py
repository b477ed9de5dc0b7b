"""Fixture plugin: MCP clients (the SDK's) of a served tmws, over Streamable HTTP and stdio.

``mcp_served`` is `tmws serve` as an operator runs it (2 workers, auth, rate limits, Redis)
on a database of its own; ``mcp_http(served, namespace, *scopes)`` is a connected client
of its ``/mcp`` with a token, ``mcp_stdio(database_url, redis_url, *args)`` one of a
spawned ``tmws mcp``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import SECRET, make_settings, scratch_database
from tests.fix_server import Served, server_env, start_server, stop_server
from tmws.auth import TokenAuthority

__all__ = ["MCP_RATE_LIMIT", "mcp_http", "mcp_served", "mcp_stdio"]

MCP_RATE_LIMIT = 1000  # requests per minute per namespace


@pytest.fixture(scope="package")
async def mcp_served(database_url: str, redis_url: str,
                     tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    async with scratch_database(database_url, migrate=make_settings(database_url)) as url:
        tmp = tmp_path_factory.mktemp("mcp")
        log = tmp / "server.log"
        process, base = await asyncio.to_thread(start_server, {
            "TMWS_DATABASE_URL": url, "TMWS_WORKERS": "2", "TMWS_REDIS_URL": redis_url,
            "TMWS_AUTH_ENABLED": "true", "TMWS_SECRET_KEY": SECRET,
            "TMWS_RATE_LIMIT_ENABLED": "true", "TMWS_RATE_LIMIT_REQUESTS": str(MCP_RATE_LIMIT),
            "TMWS_RATE_LIMIT_PERIOD": "60", "TMWS_PATTERN_MEMORY_TIMEOUT": "5000",
            "TMWS_PATTERN_HYBRID_TIMEOUT": "5000", "TMWS_LOG_LEVEL": "INFO",
        }, tmp, log=log)
        try:
            yield Served(base, log, TokenAuthority(SECRET, 60), url)
        finally:
            await asyncio.to_thread(stop_server, process)


@asynccontextmanager
async def mcp_http(served: Served, namespace: str, *scopes: str,
                   token: str | None = None, mode: str = "auto") -> AsyncIterator[Client]:
    """A client of ``served``'s /mcp with a token for ``namespace`` (``scopes``: default an
    agent's), or with ``token`` as given; ``mode`` "legacy" for the initialize handshake
    (protocol 2025-11-25), "auto" for the 2026-07-28 single-exchange protocol."""
    if token is None:
        headers = served.headers(namespace, *scopes)
    else:
        headers = {"authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
            Client(streamable_http_client(f"{served.base}/mcp", http_client=http),
                   mode=mode) as client:
        yield client


@asynccontextmanager
async def mcp_stdio(database_url: str, redis_url: str, *args: str,
                    extra_env: dict[str, str] | None = None) -> AsyncIterator[Client]:
    """A client of ``tmws mcp ARGS`` spawned on ``database_url``."""
    env = server_env({"TMWS_DATABASE_URL": database_url, "TMWS_REDIS_URL": redis_url,
                      "TMWS_PATTERN_MEMORY_TIMEOUT": "5000",
                      "TMWS_PATTERN_HYBRID_TIMEOUT": "5000", **(extra_env or {})})
    parameters = StdioServerParameters(command=sys.executable, args=["-m", "tmws", "mcp", *args],
                                       env=env)
    async with Client(parameters, read_timeout_seconds=60) as client:
        yield client
