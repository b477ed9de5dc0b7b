"""HTTP load: POST /api/v1/execute on four paths vs a bare Granian ASGI endpoint, one run.

Servers (all on loopback, one Granian worker each, started once and kept up together):

- ``bare``: ``bench.bare_asgi:app``, msgspec decode of the request struct and encode of a
  real tmws cache-hit body, nothing else;
- ``tmws``: ``tmws serve`` without Redis (``TMWS_REDIS_URL`` unset: L1 only);
- ``tmws+redis``: the same with ``TMWS_REDIS_URL=redis://127.0.0.1:6379/14`` (``--redis-url``;
  FLUSHDB first and last; skipped with ``--no-redis`` or when Redis does not answer).

Both tmws servers share one embedded PostgreSQL in a temporary directory (or
``--database-url``); before timing,
``--memories`` memories (default 300) are stored in namespace ``bench`` through
``POST /api/v1/memories``. Cases:

- ``bare``        the bare endpoint;
- ``(a) hit``     infrastructure, L1 cache hit (the same query repeated);
- ``(b) miss``    infrastructure with ``"use_cache": false`` (route, handler, encode);
- ``(c) memory``  ``recall memories about ...`` in namespace ``bench``, ``use_cache`` false:
                  full text + vector kNN in PostgreSQL on every request;
- ``(d) hybrid``  ``find similar ...`` (``semantic_search``, routed by its trigger),
                  ``use_cache`` false;
- ``(a) hit, Redis``  case (a) on the server with Redis configured.

wrk ``-t2 -c64 -d{duration}s`` with a Lua script posting the case's body; its ``done()``
prints requests, non-2xx/socket errors and the 50/95/99th latency percentiles. Every case is
warmed up once (``--warmup``, 2 s), then ``--runs`` rounds run every case once each, the order
rotating from round to round, so that load from elsewhere on the machine falls on all cases
alike.
Printed: per-round figures (stderr), then medians; ``vs bare`` is the median of the
per-round ratios of requests/s (the target for (a): at least 60%). Requests/s count every
response; non-2xx ones (e.g. 504 when a memory pattern passes its 100 ms
``TMWS_PATTERN_MEMORY_TIMEOUT``) are shown as a share, with the 2xx rate beside them.

    .venv/bin/python bench/http_load.py [--duration 10] [--runs 3] [--connections 64]
        [--no-redis] [--memories 300] [--cases bare,hit,...] [--json results.json]
        [--tmws-command "python patched_serve.py"] [--redis-url URL] [--smoke]

About 3.5 minutes with the defaults. Needs ``wrk`` (Debian package).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._postgres import add_database_option, server_database_env
from bench._smoke import parse_args
from tests.loopback import base_url, free_port, stop

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/14"
NAMESPACE = "bench"
HIT = {"query": "run tool vector_search", "execution_mode": "balanced"}

# wrk's done() hook: one machine-readable line (latencies in µs).
_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end
"""


@dataclass
class Case:
    key: str
    label: str
    server: str  # "bare", "tmws" or "tmws+redis"
    body: dict[str, Any]
    expect: dict[str, Any] = field(default_factory=dict)  # fields the response must have


CASES = (
    Case("bare", "bare ASGI + msgspec", "bare", HIT),
    Case("hit", "(a) infra, L1 hit", "tmws", HIT,
         {"success": True, "cache_hit": True, "pattern_name": "execute_mcp_tool"}),
    Case("miss", "(b) infra, miss", "tmws", {**HIT, "use_cache": False},
         {"success": True, "cache_hit": False, "pattern_name": "execute_mcp_tool"}),
    Case("memory", "(c) memory recall", "tmws",
         {"query": "recall memories about authentication tokens", "execution_mode": "balanced",
          "context": {"namespace": NAMESPACE}, "use_cache": False},
         {"success": True, "cache_hit": False, "pattern_name": "recall_memory"}),
    Case("hybrid", "(d) hybrid semantic_search", "tmws",
         {"query": "find similar authentication issues", "execution_mode": "balanced",
          "context": {"namespace": NAMESPACE}, "use_cache": False},
         {"success": True, "cache_hit": False, "pattern_name": "semantic_search"}),
    Case("hit_redis", "(a) infra, L1 hit, Redis", "tmws+redis", HIT,
         {"success": True, "cache_hit": True, "pattern_name": "execute_mcp_tool"}),
)

# Seeded memory text: topics whose words the recall and similar queries share.
_TOPICS = {
    "auth": ("authentication", "tokens", "login", "session", "password", "oauth", "jwt"),
    "db": ("database", "postgres", "index", "query", "vacuum", "replication", "pool"),
    "cache": ("cache", "redis", "eviction", "ttl", "hit", "invalidation", "latency"),
    "deploy": ("deploy", "rollout", "kubernetes", "canary", "rollback", "helm", "release"),
    "perf": ("performance", "profiling", "throughput", "optimization", "cpu", "memory", "gc"),
}
_FILLER = ("the", "issue", "with", "after", "we", "found", "that", "fixed", "by", "changing",
           "when", "under", "load", "service", "team", "noted", "incident", "similar", "again")


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server for {url} exited with {process.returncode}")
        try:
            httpx.post(url, json=HIT, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout}s")


def run_wrk(url: str, duration: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
         url], capture_output=True, text=True, check=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no result:\n{out}")
    requests, micros, status, sock, p50, p95, p99, pmax, mean = map(float, line.split()[1:])
    return {"rps": requests / (micros / 1e6), "ok_rps": (requests - status) / (micros / 1e6),
            "requests": requests, "non_2xx": status,
            "socket_errors": sock, "p50_ms": p50 / 1000, "p95_ms": p95 / 1000,
            "p99_ms": p99 / 1000, "max_ms": pmax / 1000, "mean_ms": mean / 1000}


def redis_reachable(url: str) -> bool:
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    client.flushdb()
    client.close()


def seed_memories(base: str, count: int) -> None:
    rng = random.Random(5)
    topics = list(_TOPICS)
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(count):
            topic = topics[i % len(topics)]
            words = [rng.choice(_TOPICS[topic]) if rng.random() < 0.45 else rng.choice(_FILLER)
                     for _ in range(rng.randint(8, 20))]
            response = client.post("/api/v1/memories", json={
                "content": " ".join(words), "tags": [topic, rng.choice(("ops", "dev", "sec"))],
                "importance": round(rng.random(), 2), "namespace": NAMESPACE,
                "visibility": "private"})
            if response.status_code != 201:
                raise SystemExit(f"seeding memory {i} failed: {response.status_code} "
                                 f"{response.text}")


def check_case(url: str, case: Case) -> dict[str, Any]:
    """One request before timing: the case must do what its label says (a cold first call
    may time out: up to five tries)."""
    for _ in range(5):
        response = httpx.post(url, json=case.body, timeout=10)
        body: dict[str, Any] = response.json()
        if response.status_code not in (503, 504):
            break
        time.sleep(0.5)
    if response.status_code != 200:
        raise SystemExit(f"{case.label}: {response.status_code} {body}")
    wrong = {k: body.get(k) for k, v in case.expect.items() if body.get(k) != v}
    if wrong:
        raise SystemExit(f"{case.label}: expected {case.expect}, got {wrong}: {body}")
    return body


def tmws_command(port: int, data_dir: str, redis_url: str | None, command: str | None = None,
                 database_url: str | None = None) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
    env.update({"TMWS_API_PORT": str(port), "TMWS_LOG_LEVEL": "WARNING", "TMWS_WORKERS": "1",
                **server_database_env(database_url, data_dir)})
    if redis_url is not None:
        env["TMWS_REDIS_URL"] = redis_url
    return (shlex.split(command) if command else [sys.executable, "-m", "tmws", "serve"]), env


@contextlib.contextmanager
def servers(args: argparse.Namespace, tmp: str, use_redis: bool
            ) -> Iterator[dict[str, str]]:
    """Start every server (tmws first: the bare one encodes a real tmws body); yields
    server name -> execute URL."""
    processes: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    data_dir = f"{tmp}/data"  # one embedded PostgreSQL, shared by both tmws servers
    try:
        for name, redis_url in (("tmws", None),
                                ("tmws+redis", args.redis_url if use_redis else None)):
            if name == "tmws+redis" and not use_redis:
                continue
            port = free_port()
            command, env = tmws_command(port, data_dir, redis_url, args.tmws_command,
                                        args.database_url)
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env))
            urls[name] = f"{base_url(port)}/api/v1/execute"
            wait_ready(urls[name], processes[-1])  # one at a time: the first starts PostgreSQL
        httpx.post(urls["tmws"], json=HIT, timeout=5)  # computed once, then cached
        result_file = Path(tmp) / "result.json"
        result_file.write_text(json.dumps(check_case(urls["tmws"], CASES[1])))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--log-level", "warning",
             "bench.bare_asgi:app"],
            cwd=ROOT, env={**env, "BARE_ASGI_RESULT": str(result_file)}))
        urls["bare"] = f"{base_url(port)}/"
        wait_ready(urls["bare"], processes[-1])
        yield urls
    finally:
        for process in reversed(processes):
            stop(process)


def write_script(path: Path, body: dict[str, Any]) -> None:
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n" + _DONE)


def _fmt(f: dict[str, float]) -> str:
    errors = int(f["non_2xx"] + f["socket_errors"])
    return (f"{f['rps']:>8,.0f} req/s  p50 {f['p50_ms']:6.2f}  p95 {f['p95_ms']:6.2f}"
            f"  p99 {f['p99_ms']:6.2f} ms" + (f"  ({errors} errors, "
                                              f"{errors / f['requests']:.0%})" if errors else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of each case first")
    parser.add_argument("--runs", type=int, default=3, help="rounds of every case")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--memories", type=int, default=300, help="memories seeded")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis case")
    parser.add_argument("--cases", default=",".join(c.key for c in CASES),
                        help="comma-separated subset of: " + ",".join(c.key for c in CASES))
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--tmws-command", help="run this instead of `python -m tmws serve` "
                        "(A/B tests of a patched copy; same environment)")
    parser.add_argument("--redis-url", default=REDIS_URL, help="a database it may flush")
    add_database_option(parser)
    args = parse_args(parser, duration=1, warmup=0, runs=1, connections=4, memories=5)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required: apt-get install wrk")
    wanted = set(args.cases.split(","))
    use_redis = "hit_redis" in wanted and not args.no_redis
    if use_redis and not redis_reachable(args.redis_url):
        print(f"Redis at {args.redis_url} does not answer: skipping the Redis case",
              file=sys.stderr)
        use_redis = False
    cases = [c for c in CASES if c.key in wanted and (c.server != "tmws+redis" or use_redis)]
    started = time.monotonic()
    if use_redis:
        flush_redis(args.redis_url)
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp, servers(args, tmp, use_redis) as urls:
        base = urls["tmws"].removesuffix("/api/v1/execute")
        if {"memory", "hybrid"} & {c.key for c in cases}:
            seed_memories(base, args.memories)
        scripts = {}
        for case in cases:
            scripts[case.key] = Path(tmp) / f"{case.key}.lua"
            write_script(scripts[case.key], case.body)
            if case.server != "bare":
                httpx.post(urls[case.server], json=case.body, timeout=10)  # fill the cache
                check_case(urls[case.server], case)
        for case in cases if args.warmup else ():
            run_wrk(urls[case.server], args.warmup, args.connections, scripts[case.key])
        for n in range(args.runs):
            order = cases[n % len(cases):] + cases[:n % len(cases)]
            figures = {}
            for case in order:
                figures[case.key] = run_wrk(urls[case.server], args.duration,
                                            args.connections, scripts[case.key])
            rounds.append(figures)
            print(f"round {n + 1}:", file=sys.stderr)
            for case in cases:
                print(f"  {case.label:<28} {_fmt(figures[case.key])}", file=sys.stderr)
    if use_redis:
        flush_redis(args.redis_url)

    print(f"wrk -t2 -c{args.connections} -d{args.duration}s --latency, 1 Granian worker, "
          f"loopback; medians of {args.runs} rounds ({time.monotonic() - started:.0f} s in all)")
    print(f"  {'case':<28} {'req/s':>8}   {'p50':>6} {'p95':>6} {'p99':>6} ms   vs bare"
          "   non-2xx")
    medians: dict[str, dict[str, float]] = {}
    for case in cases:
        runs = [r[case.key] for r in rounds]
        medians[case.key] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        m = medians[case.key]
        ratio = (statistics.median(r[case.key]["rps"] / r["bare"]["rps"] for r in rounds)
                 if "bare" in medians and case.key != "bare" else None)
        errors = sum(r["non_2xx"] + r["socket_errors"] for r in runs)
        share = errors / sum(r["requests"] for r in runs)
        print(f"  {case.label:<28} {m['rps']:>8,.0f}   {m['p50_ms']:6.2f} {m['p95_ms']:6.2f} "
              f"{m['p99_ms']:6.2f}      {f'{ratio:6.0%}' if ratio is not None else '':>6}"
              + (f"   {share:.{0 if share >= 0.01 else 2}%} ({m['ok_rps']:,.0f} 2xx/s)"
                 if errors else ""))
    if "bare" in medians and "hit" in medians:
        ratios = [r["hit"]["rps"] / r["bare"]["rps"] for r in rounds]
        print(f"  (a)/bare per round: {', '.join(f'{x:.0%}' for x in ratios)}; median "
              f"{statistics.median(ratios):.0%} (target >= 60%)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rounds": rounds, "medians": medians}, indent=1))


if __name__ == "__main__":
    main()
