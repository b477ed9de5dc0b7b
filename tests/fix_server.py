"""Fixture plugin: `tmws serve` started for real (Granian, its workers, the real databases).

``start_server(env, tmp)`` runs one on a free port and returns once ``/health`` answers;
``stop_server`` sends SIGTERM as an orchestrator would. Every server is a pattern group of
its own (``TMWS_PATTERN_SYNC_GROUP``) unless the test names one: its workers share one
pattern set, other tests' servers do not.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET, make_settings, scratch_database
from tests.loopback import base_url, free_port
from tmws.auth import DEFAULT_SCOPES, TokenAuthority
from tmws.patterns import default_library_path

__all__ = ["ARMOURED_RATE_LIMIT", "Served", "armoured", "server_env", "start_server",
           "stop_server"]


def server_env(env_overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment of a `tmws` subprocess: this one's without TMWS_*, then the overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
    env.update({"TMWS_LOG_LEVEL": "WARNING", "TMWS_DB_MAX_CONNECTIONS": "2",
                "TMWS_PATTERN_SYNC_GROUP": f"test-{uuid.uuid4().hex[:12]}"})
    env.update(env_overrides)
    return env


def start_server(env_overrides: Mapping[str, str], tmp: Path, *, log: Path | None = None,
                 ready_timeout: float = 60) -> tuple[subprocess.Popen[bytes], str]:
    """`tmws serve` on a free port, once /health answers; its output goes to ``log``
    (default: ``tmp/server-<port>.log``)."""
    port = free_port()
    env = server_env({"TMWS_API_PORT": str(port), **env_overrides})
    log = log or tmp / f"server-{port}.log"
    output = open(log, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([sys.executable, "-m", "tmws", "serve"], env=env, stdout=output,
                               stderr=subprocess.STDOUT)
    output.close()  # the child has its own descriptor
    base = base_url(port)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    process.wait()
    raise AssertionError(f"server did not become ready within {ready_timeout:g} s")


def stop_server(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@dataclass(frozen=True)
class Served:
    """A running `tmws serve`: its URL, its log, and (with auth on) tokens for it."""

    base: str
    log: Path
    authority: TokenAuthority | None = None
    database_url: str | None = None

    def headers(self, namespace: str, *scopes: str) -> dict[str, str]:
        """An Authorization header for ``namespace`` with ``scopes`` (default: an agent's)."""
        assert self.authority is not None, "this server runs without auth"
        token = self.authority.create(namespace, scopes or DEFAULT_SCOPES)
        return {"authorization": f"Bearer {token}"}

    def errors_logged(self) -> list[str]:
        """The server's ERROR records so far (a 500 always logs one)."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
                found.append(f"{record.get('message')}\n{record.get('exc_info', '')}")
        return found


ARMOURED_RATE_LIMIT = 1000  # requests per minute per namespace


@pytest.fixture(scope="package")
async def armoured(database_url: str, redis_url: str,
                   tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    """A served instance as an operator runs one: 2 workers, auth, rate limits, Redis, on a
    database of its own (attacks leave shared memories behind), with a pattern file it may
    reload (a copy of the shipped one)."""
    async with scratch_database(database_url, migrate=make_settings(database_url)) as url:
        tmp = tmp_path_factory.mktemp("armoured")
        patterns = tmp / "patterns.yaml"
        shutil.copy(default_library_path(), patterns)
        log = tmp / "server.log"
        process, base = await asyncio.to_thread(start_server, {
            "TMWS_DATABASE_URL": url, "TMWS_WORKERS": "2", "TMWS_REDIS_URL": redis_url,
            "TMWS_AUTH_ENABLED": "true", "TMWS_SECRET_KEY": SECRET,
            "TMWS_RATE_LIMIT_ENABLED": "true",
            "TMWS_RATE_LIMIT_REQUESTS": str(ARMOURED_RATE_LIMIT),
            "TMWS_RATE_LIMIT_PERIOD": "60", "TMWS_PATTERN_CONFIG": str(patterns),
            "TMWS_PATTERN_INFRA_TIMEOUT": "2000", "TMWS_PATTERN_MEMORY_TIMEOUT": "5000",
            "TMWS_PATTERN_HYBRID_TIMEOUT": "5000", "TMWS_LOG_LEVEL": "INFO",
        }, tmp, log=log)
        try:
            yield Served(base, log, TokenAuthority(SECRET, 60), url)
        finally:
            await asyncio.to_thread(stop_server, process)
