"""Fixture plugin: `tmws serve` started for real (Granian, its workers, the real databases).

``start_server(env, tmp)`` runs one on a free port and returns once ``/health`` answers;
``stop_server`` sends SIGTERM as an orchestrator would. Every server is a pattern group of
its own (``TMWS_PATTERN_SYNC_GROUP``) unless the test names one: its workers share one
pattern set, other tests' servers do not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.conftest import free_port

__all__ = ["server_env", "start_server", "stop_server"]


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
    base = f"http://127.0.0.1:{port}"
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
