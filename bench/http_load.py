"""HTTP load: execute on an infrastructure cache hit vs a bare Granian ASGI endpoint.

Both servers run here, one after the other, on loopback with one Granian worker; wrk drives
them with the same request for the same time. Prints requests/s and latency percentiles
for each and the ratio (the target: tmws reaches at least 60% of the bare endpoint).

    .venv/bin/python bench/http_load.py [--duration 10] [--connections 64]

Needs `wrk` (Debian package) and uses the embedded PostgreSQL under a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

QUERY = {"query": "run tool vector_search", "execution_mode": "balanced"}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            httpx.post(url, json=QUERY, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def run_wrk(url: str, duration: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    result = {"rps": rps}
    for pct in ("50", "90", "99"):
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if match:
            value, unit = float(match[1]), match[2]
            result[f"p{pct}_ms"] = value / 1000 if unit == "us" else value * (
                1000 if unit == "s" else 1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors[1]} error responses:\n{out}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps(QUERY))}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}

        port = free_port()
        tmws = subprocess.Popen(
            [sys.executable, "-m", "tmws", "serve"], cwd=ROOT,
            env={**env, "TMWS_API_PORT": str(port), "TMWS_DATA_DIR": f"{tmp}/data",
                 "TMWS_LOG_LEVEL": "WARNING", "TMWS_WORKERS": "1"})
        url = f"http://127.0.0.1:{port}/api/v1/execute"
        try:
            wait_ready(url, tmws)
            body = httpx.post(url, json=QUERY, timeout=5).json()
            assert body["success"] and body["cache_hit"], body
            result_file = Path(tmp) / "result.json"
            result_file.write_text(json.dumps(body))
            run_wrk(url, 2, args.connections, script)  # warm-up, not reported
            tmws_figures = run_wrk(url, args.duration, args.connections, script)
        finally:
            stop(tmws)

        port = free_port()
        bare = subprocess.Popen(
            [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--log-level", "warning",
             "bench.bare_asgi:app"],
            cwd=ROOT, env={**env, "BARE_ASGI_RESULT": str(result_file)})
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_ready(url, bare)
            run_wrk(url, 2, args.connections, script)
            bare_figures = run_wrk(url, args.duration, args.connections, script)
        finally:
            stop(bare)

    print(f"wrk -t2 -c{args.connections} -d{args.duration}s, 1 Granian worker, loopback")
    for name, figures in (("bare ASGI + msgspec", bare_figures),
                          ("tmws execute (L1 hit)", tmws_figures)):
        print(f"  {name:<24} {figures['rps']:>9.0f} req/s   p50 {figures.get('p50_ms', 0):.2f} ms"
              f"   p90 {figures.get('p90_ms', 0):.2f} ms   p99 {figures.get('p99_ms', 0):.2f} ms")
    print(f"  ratio tmws / bare: {tmws_figures['rps'] / bare_figures['rps']:.0%} (target >= 60%)")


if __name__ == "__main__":
    main()
