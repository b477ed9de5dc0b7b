"""Schemathesis against a live `tmws serve`, driven by its own /openapi.json.

Every operation gets generated requests, valid and invalid (examples, coverage, fuzzing and
stateful sequences that follow the inferred links: create a memory, read it, delete it).
No response may be a 5xx, and every response must be documented: its status, its content
type and its body's schema.

The fuzzer registers and deletes patterns and writes memories, so the server has a database
of its own and no Redis (pattern changes would reach every instance on the shared one).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings, scratch_database
from tests.fix_server import start_server as _start
from tests.fix_server import stop_server as _stop

# Per operation and phase; about 1,000 requests in all, 10-20 s on this machine.
MAX_EXAMPLES = 25
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")


@pytest.fixture
async def own_database(database_url: str) -> AsyncIterator[str]:
    """A migrated database of its own on the session's PostgreSQL, dropped afterwards."""
    async with scratch_database(database_url, migrate=make_settings(database_url)) as url:
        yield url


def _server_errors(log: Path) -> str:
    """The server's ERROR records (their tracebacks name the cause of a 500)."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            lines.append(line)
            continue
        if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
            lines.append(f"{record.get('message')}\n{record.get('exc_info', '')}")
    return "\n".join(lines[-20:])


def test_openapi_fuzz(own_database: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    # Generous handler timeouts, as in conftest.make_settings: the readiness probe's database
    # ping gets 0.6 x TMWS_PATTERN_INFRA_TIMEOUT (30 ms by default), which a busy machine
    # misses now and then, answering 503.
    process, base = _start({"TMWS_DATABASE_URL": own_database,
                            "TMWS_PATTERN_INFRA_TIMEOUT": "2000",
                            "TMWS_PATTERN_MEMORY_TIMEOUT": "5000",
                            "TMWS_PATTERN_HYBRID_TIMEOUT": "5000"}, tmp_path, log=log)
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(MAX_EXAMPLES),
        "--request-timeout", "10",
        "--workers", "1",  # as fast as 2 on two cores, and the server's load stays low
        "--generation-database", "none",  # no .hypothesis directory, every run fresh
        "--suppress-health-check", "all",  # too_slow etc. judge the machine, not the API
        "--no-color",
    ]
    started = time.monotonic()
    try:
        paths = httpx.get(f"{base}/openapi.json", timeout=10).json()["paths"]
        operations = sum(len(methods) for methods in paths.values())
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                             timeout=300, check=False)
    finally:
        assert _stop(process) == 0
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 0, (
        f"schemathesis failed (exit {run.returncode}, {elapsed:.0f} s); `st replay` needs "
        f"the same server, so read the curl lines:\n{output}\n"
        f"--- server errors ---\n{_server_errors(log)}")
    # Every operation, /metrics too; schemathesis leaves out the document's own.
    selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", output)
    assert selected is not None, output
    assert int(selected[1]) == int(selected[2]) == int(selected[3]) == operations - 1, output
