from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SECRET
from tests.fix_server import start_server, stop_server
from tests.test_cli import run as run_cli
from tmws.auth import TokenAuthority


async def test_tmws_stats_reports_the_running_service(database_url: str,
                                                      tmp_path: Path) -> None:
    process, base = await asyncio.to_thread(start_server, {
        "TMWS_DATABASE_URL": database_url, "TMWS_WORKERS": "2", "TMWS_AUTH_ENABLED": "true",
        "TMWS_SECRET_KEY": SECRET}, tmp_path)
    try:
        env = {"TMWS_DATABASE_URL": database_url}
        refused = await asyncio.to_thread(run_cli, "stats", "--url", base, env=env)
        assert refused.returncode == 2 and "--token" in refused.stderr
        assert "Traceback" not in refused.stderr
        token = TokenAuthority(SECRET, 60).create("ops", ("metrics:read",))
        done = await asyncio.to_thread(run_cli, "stats", "--url", base, "--token", token,
                                       env=env)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        service = report["service"]
        assert service["database_stats"]["max_size"] >= 1  # the answering worker's pool
        pools = report["database_connections"]["pools"]
        workers = {pool["pid"] for pool in pools if pool["role"] == "service"}
        assert service["worker_pid"] in workers
        assert "shared_preload_libraries" in report["slow_statements"]["error"]
        # The token from stdin keeps it out of the process list.
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
        piped = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "tmws", "stats", "--url", base,
                             "--token", "-"], input=token + "\n", capture_output=True,
            text=True, env={**base_env, **env}, timeout=60)
        assert piped.returncode == 0 and "worker_pid" in piped.stdout
    finally:
        await asyncio.to_thread(stop_server, process)


def test_tmws_stats_names_an_unreachable_service() -> None:
    done = run_cli("stats", "--url", "http://127.0.0.1:1")
    assert done.returncode == 2
    assert "cannot reach the service at http://127.0.0.1:1" in done.stderr
