"""Shared fixtures: a real PostgreSQL with pgvector (bundled by pgserver) and a real Redis.

A missing service fails the run; nothing here skips.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from tmws.config import Settings
from tmws.database import EmbeddedPostgres, upgrade
from tmws.engine import PatternExecutionEngine, create_pattern_execution_engine

REDIS_URL = "redis://127.0.0.1:6379/15"
# The machine's PostgreSQL 15 has no pgvector: used to test the missing-extension error.
PLAIN_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database on a private embedded PostgreSQL 16 + pgvector."""
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("tmws-data"))
    conninfo = embedded.start()
    asyncio.run(upgrade(conninfo))
    yield conninfo
    embedded.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis; its absence is a failure."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} and is not reachable: {exc}")
    finally:
        client.close()
    return REDIS_URL


def make_settings(database_url: str, **overrides: str) -> Settings:
    # Generous handler timeouts: functional tests must not fail because the machine is busy
    # (tests of the timeouts themselves set their own).
    env = {"TMWS_DATABASE_URL": database_url, "TMWS_DB_MAX_CONNECTIONS": "4",
           "TMWS_LOG_LEVEL": "WARNING", "TMWS_PATTERN_INFRA_TIMEOUT": "2000",
           "TMWS_PATTERN_MEMORY_TIMEOUT": "5000", "TMWS_PATTERN_HYBRID_TIMEOUT": "5000"}
    env.update({f"TMWS_{k.upper()}": v for k, v in overrides.items()})
    return Settings.from_env(env)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[PatternExecutionEngine]:
    async with await create_pattern_execution_engine(make_settings(database_url)) as built:
        yield built


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


DATA_DIR = Path(__file__).parent / "data"
