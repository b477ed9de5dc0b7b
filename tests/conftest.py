"""Shared fixtures: a real PostgreSQL with pgvector (the embedded bundle) and a real Redis.

A missing service fails the run; nothing here skips.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis
from psycopg import sql

from tests.loopback import free_port
from tmws.config import Settings
from tmws.database import EmbeddedPostgres, upgrade
from tmws.engine import PatternExecutionEngine, create_pattern_execution_engine
from tmws.http.app import TmwsApp

# Fixture plugins (psycopg's tests/fix_*.py): served instances, a store, scratch databases,
# a hand-moved clock, MCP clients.
pytest_plugins = ["tests.fix_server", "tests.fix_memory", "tests.fix_database",
                  "tests.fix_clock", "tests.fix_mcp", "tests.fix_redis",
                  "tests.fix_pgbouncer", "tests.fix_replica"]

# Database 15 by default; parallel sessions (one per developer) each set their own.
REDIS_URL = os.environ.get("TESTS_REDIS_URL", "redis://127.0.0.1:6379/15")
# The machine's PostgreSQL 15 has no pgvector: used to test the missing-extension error.
PLAIN_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database on a private embedded PostgreSQL 18 + pgvector 0.8."""
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("tmws-data"))
    conninfo = embedded.start()
    asyncio.run(upgrade(conninfo))
    yield conninfo
    embedded.stop()


REDIS_TOPOLOGIES = ("single", "cluster", "sentinel")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Modules marked redis_topologies run their Redis tests against every topology.
    if "redis_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
            "redis_topologies"):
        metafunc.parametrize("redis_url", REDIS_TOPOLOGIES, indirect=True, scope="session")


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """The machine's Redis (its absence is a failure); with the ``redis_topologies`` mark,
    also a Cluster and Sentinel of the tests' own (tests/fix_redis.py)."""
    topology = getattr(request, "param", "single")
    if topology != "single":
        servers = request.getfixturevalue(f"redis_{topology}")
        return str(servers.url)
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
        client.flushdb()  # database 15 belongs to the tests
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} and is not reachable: {exc}")
    finally:
        client.close()
    return REDIS_URL


def make_settings(database_url: str, **overrides: str) -> Settings:
    # Generous handler timeouts: functional tests must not fail because the machine is busy
    # (tests of the timeouts themselves set their own).
    # Each settings object is a pattern group of its own: engines built from it share their
    # pattern set (as workers of one deployment do); other tests' engines do not.
    env = {"TMWS_DATABASE_URL": database_url, "TMWS_DB_MAX_CONNECTIONS": "4",
           "TMWS_LOG_LEVEL": "WARNING", "TMWS_PATTERN_INFRA_TIMEOUT": "2000",
           "TMWS_PATTERN_MEMORY_TIMEOUT": "5000", "TMWS_PATTERN_HYBRID_TIMEOUT": "5000",
           "TMWS_PATTERN_SYNC_GROUP": f"test-{uuid.uuid4().hex[:12]}",
           "TMWS_AUDIT_SPILL_DIR": str(Path(tempfile.gettempdir()) / "tmws-test-audit-spill")}
    env.update({f"TMWS_{k.upper()}": v for k, v in overrides.items()})
    return Settings.from_env(env)


@asynccontextmanager
async def scratch_database(database_url: str, *, migrate: Settings | None = None
                           ) -> AsyncIterator[str]:
    """A database of its own beside the shared one (empty, or migrated with ``migrate``'s
    embedding settings), dropped afterwards; yields its URL."""
    name = f"tmws_scratch_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    try:
        if migrate is not None:
            await upgrade(url, migrate)
        yield url
    finally:
        async with await psycopg.AsyncConnection.connect(database_url,
                                                         autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                               .format(sql.Identifier(name)))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[PatternExecutionEngine]:
    async with await create_pattern_execution_engine(make_settings(database_url)) as built:
        yield built


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


DATA_DIR = Path(__file__).parent / "data"


class PrivateRedis:
    """A redis-server of the test's own on a free port, to stop and start at will."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._directory),
             "--enable-debug-command", "local"],  # DEBUG SLEEP simulates a stalled server
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail("private redis-server did not start (is it installed?)")
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


# The HTTP app in process, around a real engine (tests/http/test_app.py serves it with Granian).
SECRET = "test-secret-0123456789-abcdefghijklmnop"

ApiFactory = Callable[..., AbstractAsyncContextManager[tuple[httpx.AsyncClient,
                                                             PatternExecutionEngine]]]


@pytest.fixture
def make_api(database_url: str) -> ApiFactory:
    """``async with make_api(auth_enabled="true") as (client, engine)``; ``on=url`` serves a
    database of the test's own instead of the session's."""

    @asynccontextmanager
    async def build(*, on: str | None = None, **overrides: str
                    ) -> AsyncIterator[tuple[httpx.AsyncClient, PatternExecutionEngine]]:
        if overrides.get("auth_enabled") == "true":
            overrides.setdefault("secret_key", SECRET)
        settings = make_settings(on or database_url, **overrides)
        async with await create_pattern_execution_engine(settings) as engine:
            app = TmwsApp(settings)
            app.attach(engine)
            transport = httpx.ASGITransport(app=app,
                                            client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://tmws") as client:
                yield client, engine
            for guard in app._guards:
                await guard.close()

    return build


@pytest.fixture
async def api(make_api: ApiFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_api() as (client, _):
        yield client
