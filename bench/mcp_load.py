"""MCP tool-call latency over Streamable HTTP vs the same execution over POST /api/v1/execute.

One ``tmws serve`` (one Granian worker, auth off, no Redis, embedded PostgreSQL in a
temporary directory). The operation is an L1 cache hit: ``run tool vector_search``
(pattern ``execute_mcp_tool``) computed once, then repeated. Three ways, timed request by
request with ``perf_counter_ns``, interleaved round by round so that load from elsewhere
falls on all alike:

- ``rest``: ``POST /api/v1/execute`` (httpx, one kept-alive connection);
- ``mcp``: ``POST /mcp`` with the JSON-RPC ``tools/call`` of tool ``execute`` (httpx, one
  kept-alive connection; stateless, JSON response: what a handshake-era MCP client, protocol
  2025-11-25 and older, sends per call);
- ``mcp 2026``: the same call as a 2026-07-28 single exchange (``_meta`` envelope and the
  ``Mcp-Method``/``Mcp-Name`` headers), answered by the SDK's own entry;
- ``mcp sdk``: ``Client.call_tool("execute", ...)`` of the official SDK over Streamable
  HTTP (its own client-side work included).

Then wrk (``-t2 -c{connections} -d{duration}s``) on ``rest`` and ``mcp`` for throughput.
Printed: p50/p95/p99 per way and the p50 ratios (target: ``mcp`` within 1.5x of ``rest``).

    .venv/bin/python bench/mcp_load.py [--requests 3000] [--duration 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
HIT = {"query": "run tool vector_search", "execution_mode": "balanced"}
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "execute", "arguments": HIT}}
MCP_HEADERS = {"accept": "application/json, text/event-stream",
               "content-type": "application/json"}
MODERN_CALL = {**CALL, "params": {"name": "execute", "arguments": HIT, "_meta": {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {}}}}
MODERN_HEADERS = {**MCP_HEADERS, "mcp-protocol-version": "2026-07-28",
                  "mcp-method": "tools/call", "mcp-name": "execute"}

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.status, latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(data_dir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
    env.update({"TMWS_API_PORT": str(port), "TMWS_WORKERS": "1", "TMWS_DATA_DIR": data_dir,
                "TMWS_LOG_LEVEL": "WARNING"})
    process = subprocess.Popen([sys.executable, "-m", "tmws", "serve"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"tmws serve exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("tmws serve not ready after 120 s")


def check(base: str) -> None:
    """Both ways answer the same cached execution."""
    rest = httpx.post(f"{base}/api/v1/execute", json=HIT).json()
    assert rest["cache_hit"] is True and rest["pattern_name"] == "execute_mcp_tool", rest
    for call, headers in ((CALL, MCP_HEADERS), (MODERN_CALL, MODERN_HEADERS)):
        result = httpx.post(f"{base}/mcp", json=call, headers=headers).json()["result"]
        assert not result.get("isError"), result
        assert result["structuredContent"]["cache_hit"] is True, result
        assert result["structuredContent"]["pattern_name"] == "execute_mcp_tool", result


async def sequential(base: str, requests: int) -> dict[str, list[float]]:
    from mcp import Client

    samples: dict[str, list[float]] = {"rest": [], "mcp": [], "mcp 2026": [], "mcp sdk": []}
    rest_body = json.dumps(HIT).encode()
    mcp_body = json.dumps(CALL).encode()
    modern_body = json.dumps(MODERN_CALL).encode()
    async with httpx.AsyncClient(base_url=base) as http, Client(f"{base}/mcp") as sdk:
        for _ in range(200):  # warm-up
            await http.post("/api/v1/execute", content=rest_body,
                            headers={"content-type": "application/json"})
            await http.post("/mcp", content=mcp_body, headers=MCP_HEADERS)
            await http.post("/mcp", content=modern_body, headers=MODERN_HEADERS)
            await sdk.call_tool("execute", HIT)
        for _ in range(requests):
            started = time.perf_counter_ns()
            response = await http.post("/api/v1/execute", content=rest_body,
                                       headers={"content-type": "application/json"})
            samples["rest"].append((time.perf_counter_ns() - started) / 1e6)
            assert response.status_code == 200
            started = time.perf_counter_ns()
            response = await http.post("/mcp", content=mcp_body, headers=MCP_HEADERS)
            samples["mcp"].append((time.perf_counter_ns() - started) / 1e6)
            assert response.status_code == 200
            started = time.perf_counter_ns()
            response = await http.post("/mcp", content=modern_body, headers=MODERN_HEADERS)
            samples["mcp 2026"].append((time.perf_counter_ns() - started) / 1e6)
            assert response.status_code == 200
            started = time.perf_counter_ns()
            result = await sdk.call_tool("execute", HIT)
            samples["mcp sdk"].append((time.perf_counter_ns() - started) / 1e6)
            assert not result.is_error
    return samples


def wrk(url: str, body: dict[str, Any], headers: dict[str, str], duration: int,
        connections: int, tmp: Path) -> dict[str, float]:
    script = tmp / "case.lua"
    lines = ['wrk.method = "POST"'] + [f'wrk.headers["{k}"] = "{v}"' for k, v in
                                       headers.items()]
    script.write_text("\n".join(lines) + f"\nwrk.body = {json.dumps(json.dumps(body))}\n"
                      + _DONE)
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    requests, micros, non_2xx, p50, p95, p99 = (int(x) for x in line.split()[1:])
    return {"rps": requests / (micros / 1e6), "non_2xx": non_2xx, "p50_ms": p50 / 1000,
            "p95_ms": p95 / 1000, "p99_ms": p99 / 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tmws-mcp-bench-") as tmp:
        process, base = start(f"{tmp}/data")
        try:
            httpx.post(f"{base}/api/v1/execute", json=HIT)  # computed once, then cached
            check(base)
            samples = asyncio.run(sequential(base, args.requests))
            print(f"sequential, one connection, {args.requests} requests each (ms):")
            for way, values in samples.items():
                print(f"  {way:9} p50 {pct(values, .5):6.3f}  p95 {pct(values, .95):6.3f}  "
                      f"p99 {pct(values, .99):6.3f}")
            rest_p50 = pct(samples["rest"], .5)
            for way in ("mcp", "mcp 2026", "mcp sdk"):
                print(f"  {way} / rest at p50: {pct(samples[way], .5) / rest_p50:.2f}x")
            if shutil.which("wrk"):
                print(f"wrk -t2 -c{args.connections} -d{args.duration}s:")
                for way, url, body, headers in (
                        ("rest", f"{base}/api/v1/execute", HIT,
                         {"Content-Type": "application/json"}),
                        ("mcp", f"{base}/mcp", CALL, MCP_HEADERS),
                        ("mcp 2026", f"{base}/mcp", MODERN_CALL, MODERN_HEADERS)):
                    f = wrk(url, body, headers, args.duration, args.connections, Path(tmp))
                    print(f"  {way:9} {f['rps']:8,.0f} req/s  p50 {f['p50_ms']:6.2f}  "
                          f"p95 {f['p95_ms']:6.2f}  p99 {f['p99_ms']:6.2f} ms  "
                          f"non-2xx {f['non_2xx']}")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
