"""Capacity: CPU per request of each kind of request in tmws, PostgreSQL and Redis, and the
database connections a worker holds: the measurements behind deploy/README.md's capacity
model.

One ``tmws serve`` (1 Granian worker, the embedded PostgreSQL, Redis database 14 or
``--redis-url`` for the L2 cache), ``--memories`` memories seeded. Each case is driven open loop
by ``tmws-loadgen`` at a fixed rate well under saturation for ``--duration`` seconds; the
CPU time (user + system, every thread, from ``/proc``) that tmws's processes, PostgreSQL's
and Redis's gained over the run, divided by the 2xx answers, is what one request costs
each. The load generator's own CPU is not counted. Cases:

- ``infra_hit``: an infrastructure query answered from the in-process cache;
- ``infra_miss``: the same kind of query, a different one each time (``use_cache`` false);
- ``recall``: memory recall (full text + vector kNN), no cache;
- ``hybrid``: ``find similar …`` (semantic_search: handler and recall in parallel), no cache;
- ``store``: ``POST /api/v1/memories`` with distinct contents (embedding, insert, audit).

Every case runs ``--runs`` times, the order rotating; medians are printed, with the largest
number of PostgreSQL client connections seen during the run (sampled every 0.2 s).

    .venv/bin/python bench/capacity.py [--duration 10] [--runs 3] [--memories 2000]
        [--rate-scale 1.0] [--redis-url redis://127.0.0.1:6379/14] [--smoke]

About 4 minutes with the defaults. Needs cargo (builds ``tmws-loadgen`` once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from bench._sla import LOADGEN, build_loadgen
from bench._smoke import parse_args
from bench.http_load import NAMESPACE, REDIS_URL, ROOT, flush_redis, seed_memories, tmws_command
from tests.loopback import base_url, free_port, process_tree, stop, wait_healthy

TICKS = os.sysconf("SC_CLK_TCK")
# Requests per second per case: low enough that one worker keeps up on two shared cores.
RATES = {"infra_hit": 800.0, "infra_miss": 400.0, "recall": 80.0, "hybrid": 80.0,
         "store": 80.0}


def _bodies(case: str, count: int) -> list[dict[str, Any]]:
    ctx = {"namespace": NAMESPACE}
    if case == "infra_hit":
        return [{"query": "run tool vector_search", "execution_mode": "balanced"}]
    if case == "infra_miss":
        return [{"query": f"run tool vector_search with k={i}", "execution_mode": "balanced",
                 "use_cache": False} for i in range(count)]
    if case == "recall":
        return [{"query": "recall memories about authentication tokens",
                 "execution_mode": "balanced", "context": ctx, "use_cache": False}]
    if case == "hybrid":
        return [{"query": "find similar authentication issues", "execution_mode": "balanced",
                 "context": ctx, "use_cache": False}]
    return [{"content": f"capacity note {i}: the nightly job {i % 97} finished in {i % 13} min",
             "namespace": NAMESPACE, "tags": ["capacity"]} for i in range(count)]


def _cpu_seconds(pids: set[int]) -> float:
    """utime + stime of the processes (all their threads; exited children not counted)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / TICKS


def _client_backends(postmaster: int) -> int:
    count = 0
    for pid in process_tree(postmaster)[1:]:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and ("[local]" in title or "127.0.0.1" in title):
            count += 1
    return count


def _run(case: str, url: str, bodies_file: Path, rate: float, duration: float,
         groups: dict[str, list[int]], postmaster: int) -> dict[str, Any]:
    pids = {name: {p for root in rs for p in process_tree(root)} for name, rs in groups.items()}
    # The embedded PostgreSQL may be a descendant of tmws's processes: counted apart.
    pids["tmws"] -= pids["postgres"] | pids["redis"]
    before = {name: _cpu_seconds(p) for name, p in pids.items()}
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.2):
            peak = max(peak, _client_backends(postmaster))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    command = [str(LOADGEN), "--url", url, "--bodies", str(bodies_file), "--connections", "32",
               "--duration", str(duration), "--warmup", "0", "--rate", str(rate)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    done.set()
    sampler.join()
    after = {name: _cpu_seconds(p) for name, p in pids.items()}
    figures = json.loads(out)
    ok = int(figures["ok"]["count"])
    return {"ok": ok, "rps": figures["ok"]["rps"], "connections": peak,
            "other": {s: e["count"] for s, e in figures["status"].items()
                      if not s.startswith("2")},
            "cpu_ms": {name: 1000 * (after[name] - before[name]) / max(ok, 1)
                       for name in groups}}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memories", type=int, default=2000)
    parser.add_argument("--rate-scale", type=float, default=1.0,
                        help="multiply every case's request rate")
    parser.add_argument("--redis-url", default=REDIS_URL,
                        help="a Redis database of the run's own (flushed first and last)")
    args = parse_args(parser, duration=0.5, runs=1, memories=5, rate_scale=0.05)
    build_loadgen()
    started = time.monotonic()
    cases = list(RATES)
    results: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        data_dir = f"{tmp}/data"
        # The embedded PostgreSQL, always: its processes' CPU is measured.
        command, env = tmws_command(port, data_dir, args.redis_url)
        flush_redis(args.redis_url)
        process = subprocess.Popen(command, cwd=ROOT, env=env)
        base = base_url(port)
        try:
            wait_healthy(base, process, path="/health")
            seed_memories(base, args.memories)
            postmaster = int((Path(data_dir) / "pgdata" / "postmaster.pid").read_text().split()[0])
            client = redis.Redis.from_url(args.redis_url)
            redis_pid = int(client.info("server")["process_id"])
            client.close()
            groups = {"tmws": [process.pid], "postgres": [postmaster], "redis": [redis_pid]}
            files = {}
            for case in cases:
                path = Path(tmp) / f"{case}.jsonl"
                count = max(1, int(RATES[case] * args.rate_scale * args.duration * args.runs) + 10)
                path.write_text("\n".join(json.dumps(b) for b in _bodies(case, count)) + "\n")
                files[case] = path
            with httpx.Client(base_url=base, timeout=30) as http:  # warm plans and caches
                for case in cases:
                    target = "/api/v1/memories" if case == "store" else "/api/v1/execute"
                    for line in files[case].read_text().splitlines()[:3]:
                        answer = http.post(target, content=line,
                                           headers={"content-type": "application/json"})
                        if answer.status_code not in (200, 201):
                            raise SystemExit(f"{case}: {answer.status_code} {answer.text}")
            for n in range(args.runs):
                for case in cases[n % len(cases):] + cases[:n % len(cases)]:
                    target = "/api/v1/memories" if case == "store" else "/api/v1/execute"
                    results[case].append(_run(case, f"{base}{target}", files[case],
                                              RATES[case] * args.rate_scale, args.duration,
                                              groups, postmaster))
                print(f"round {n + 1} done ({time.monotonic() - started:.0f} s)",
                      file=sys.stderr)
        finally:
            stop(process)
            flush_redis(args.redis_url)
    print(f"1 Granian worker, {args.memories} memories, {args.duration:g} s per run, open loop;"
          f" medians of {args.runs} runs ({time.monotonic() - started:.0f} s in all); CPU ms"
          " per 2xx answer, all threads")
    print(f"  {'case':<11} {'rate/s':>7} {'2xx/s':>7} {'tmws':>7} {'postgres':>9} {'redis':>7}"
          f" {'pg conns':>9} {'req/s per core, tmws':>21} {'other answers':>14}")
    for case in cases:
        runs = results[case]

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(statistics.median(float(r["cpu_ms"][key]) for r in runs))

        per_core = 1000 / med("tmws") if med("tmws") > 0 else float("inf")
        other: dict[str, int] = {}
        for r in runs:
            for status, count in r["other"].items():
                other[status] = other.get(status, 0) + count
        print(f"  {case:<11} {RATES[case] * args.rate_scale:>7.0f}"
              f" {statistics.median(r['rps'] for r in runs):>7.0f} {med('tmws'):>7.2f}"
              f" {med('postgres'):>9.2f} {med('redis'):>7.3f}"
              f" {max(r['connections'] for r in runs):>9} {per_core:>21,.0f}"
              f" {json.dumps(other) if other else 'none':>14}")


if __name__ == "__main__":
    main()
