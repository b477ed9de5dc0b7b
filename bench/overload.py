"""Overload: goodput of memory recall past saturation, and infrastructure beside it.

One ``tmws serve`` (``--workers``, default 1; embedded PostgreSQL or ``--database-url``; no
Redis unless ``--redis``), ``--memories`` memories seeded, then ``tmws-loadgen``
(``bench/loadgen``: latency kept per status) drives:

1. **Peak**: memory recall (``use_cache`` false: full text + vector kNN each time), closed
   loop at 1, 2, 4, 8, 16 and 32 connections (``--peak-levels``); the peak is the best 2xx
   requests/s.
2. **Overload**: the same at 64 and 256 connections (``--overload-levels``), by two kinds of
   client:
   ``polite`` ones honour ``Retry-After`` (with up to 50% jitter), as the 503 asks;
   ``greedy`` ones resend at once, as wrk does. Reported: 2xx requests/s as a share of the
   peak (target >= 90%), p50/p99 of the 2xx ones (target: p99 within
   TMWS_PATTERN_MEMORY_TIMEOUT, 100 ms), and what the rest got.
3. **Beside it**: an infrastructure miss (``use_cache`` false) sent open loop at
   ``--infra-rate`` requests/s, alone, then while memory recall runs at 64 and 256
   connections: its 2xx requests/s as a share of what it got alone (target >= 80%).

By default PostgreSQL is pinned to the last CPU and tmws (with the load generator) to the
others, as if the database had a host of its own; ``--no-pin`` shares every CPU, where
the database, tmws and the load compete for the same cores. Each figure is measured
``--runs`` times (rounds, the order rotating); medians are printed, every figure is written
with ``--json``.

    .venv/bin/python bench/overload.py [--duration 8] [--runs 3] [--workers 1]
        [--memories 2000] [--infra-rate 500] [--no-pin] [--json results.json] [--smoke]

About 8 minutes with the defaults. Needs cargo (builds ``tmws-loadgen`` once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._postgres import add_database_option
from bench._sla import LOADGEN, build_loadgen
from bench._smoke import parse_args
from bench.http_load import (
    NAMESPACE,
    REDIS_URL,
    ROOT,
    flush_redis,
    seed_memories,
    tmws_command,
)
from tests.loopback import base_url, free_port, stop, wait_healthy

MEMORY = {"query": "recall memories about authentication tokens", "execution_mode": "balanced",
          "context": {"namespace": NAMESPACE}, "use_cache": False}
INFRA = {"query": "run tool vector_search", "execution_mode": "balanced", "use_cache": False}
PEAK_LEVELS = "1,2,4,8,16,32"
OVERLOAD_LEVELS = "64,256"
CLIENTS = ("polite", "greedy")
BUDGET_MS = 100  # TMWS_PATTERN_MEMORY_TIMEOUT's default


def levels(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def load(url: str, body: dict[str, Any], duration: float, *, connections: int = 8,
         rate: float = 0.0, polite: bool = False, cpus: str | None = None,
         warmup: float = 1.0) -> subprocess.Popen[str]:
    command = [str(LOADGEN), "--url", url, "--body", json.dumps(body), "--connections",
               str(connections), "--duration", str(duration), "--warmup", str(warmup)]
    if rate:
        command += ["--rate", str(rate)]
    if polite:
        command.append("--honor-retry-after")
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"tmws-loadgen failed ({process.returncode})")
    figures: dict[str, Any] = json.loads(out)
    return figures


def pin_database(data_dir: str, cpu: int) -> None:
    """Move the embedded PostgreSQL (postmaster and every backend) to one CPU; backends
    forked later inherit it from the postmaster."""
    pid = (Path(data_dir) / "pgdata" / "postmaster.pid").read_text().split()[0]
    children = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout
    for process in [pid, *children.split()]:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), process], check=True,
                       capture_output=True)


def refusals(figures: dict[str, Any]) -> str:
    parts = [f"{status}: {entry['count']}" for status, entry in figures["status"].items()
             if not status.startswith("2")]
    if figures["errors"]:
        parts.append(f"socket errors: {figures['errors']}")
    return ", ".join(parts) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each")
    parser.add_argument("--peak-levels", default=PEAK_LEVELS, help="connections, comma-separated")
    parser.add_argument("--overload-levels", default=OVERLOAD_LEVELS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--memories", type=int, default=2000)
    parser.add_argument("--infra-rate", type=float, default=500.0)
    parser.add_argument("--no-pin", action="store_true", help="share every CPU")
    parser.add_argument("--redis", action="store_true", help="serve with TMWS_REDIS_URL")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--tmws-command", help="run this instead of `python -m tmws serve` "
                        "(e.g. an older checkout: \"env PYTHONPATH=/tmp/old python -P -m "
                        "tmws serve\")")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="print the report of a saved --json run, measure nothing")
    add_database_option(parser)
    args = parse_args(parser, duration=0.2, warmup=0.0, runs=1, memories=5, infra_rate=50.0,
                      peak_levels="1", overload_levels="4", no_pin=True)
    if args.report:
        saved = json.loads(args.report.read_text())
        for name in ("workers", "memories", "duration", "infra_rate"):
            setattr(args, name, saved[name])
        args.peak_levels = saved.get("peak_levels", PEAK_LEVELS)
        args.overload_levels = saved.get("overload_levels", OVERLOAD_LEVELS)
        report(args, saved["pinned"], saved["rounds"], saved.get("seconds", 0.0))
        return
    cpus = os.cpu_count() or 1
    # Pinning moves the embedded server's processes: a database named by URL stays put.
    pin = not args.no_pin and cpus >= 2 and args.database_url is None
    app_cpus = f"0-{cpus - 2}" if pin else None
    build_loadgen()
    peak_levels, overload_levels = levels(args.peak_levels), levels(args.overload_levels)
    started = time.monotonic()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        data_dir = f"{tmp}/data"
        command, env = tmws_command(port, data_dir, REDIS_URL if args.redis else None,
                                    args.tmws_command, args.database_url)
        env["TMWS_WORKERS"] = str(args.workers)
        if app_cpus is not None:
            command = ["taskset", "-c", app_cpus, *command]
        if args.redis:
            flush_redis(REDIS_URL)
        process = subprocess.Popen(command, cwd=ROOT, env=env)
        base = base_url(port)
        url = f"{base}/api/v1/execute"
        try:
            wait_healthy(base, process, path="/health")
            if pin:
                pin_database(data_dir, cpus - 1)
            seed_memories(base, args.memories)
            for body in (MEMORY, INFRA):
                for _ in range(10):  # a cold first call may pass its budget
                    check = httpx.post(url, json=body, timeout=10)
                    if check.status_code == 200 and check.json()["success"]:
                        break
                    time.sleep(0.5)
                else:
                    raise SystemExit(f"{body['query']!r}: {check.status_code} {check.text}")
            if args.warmup:  # warm the plans and the pool
                result(load(url, MEMORY, 3, cpus=app_cpus, warmup=args.warmup))
            steps: list[tuple[str, str, int]] = (
                [("peak", "greedy", c) for c in peak_levels]
                + [("overload", mode, c) for mode in CLIENTS for c in overload_levels]
                + [("infra", "", 0)]
                + [("beside", mode, c) for mode in CLIENTS for c in overload_levels])
            for n in range(args.runs):
                figures: dict[str, Any] = {}
                for kind, mode, connections in steps[n % len(steps):] + steps[:n % len(steps)]:
                    key = "infra" if kind == "infra" else f"{kind} {mode} {connections}"
                    if kind == "infra":
                        figures[key] = result(load(url, INFRA, args.duration,
                                                   rate=args.infra_rate, cpus=app_cpus,
                                                   warmup=args.warmup))
                    elif kind == "beside":
                        memory = load(url, MEMORY, args.duration + 1, connections=connections,
                                      polite=mode == "polite", cpus=app_cpus,
                                      warmup=args.warmup)
                        infra = load(url, INFRA, args.duration, rate=args.infra_rate,
                                     cpus=app_cpus, warmup=args.warmup)
                        figures[key] = {"infra": result(infra), "memory": result(memory)}
                    else:
                        figures[key] = result(load(url, MEMORY, args.duration,
                                                   connections=connections,
                                                   polite=mode == "polite", cpus=app_cpus,
                                                   warmup=args.warmup))
                rounds.append(figures)
                print(f"round {n + 1} done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        finally:
            stop(process)
            if args.redis:
                flush_redis(REDIS_URL)
    seconds = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps({
            "rounds": rounds, "workers": args.workers, "memories": args.memories,
            "duration": args.duration, "infra_rate": args.infra_rate, "pinned": pin,
            "peak_levels": args.peak_levels, "overload_levels": args.overload_levels,
            "seconds": seconds}, indent=1))
    report(args, pin, rounds, seconds)


def report(args: argparse.Namespace, pin: bool, rounds: list[dict[str, Any]],
           seconds: float) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    peak_levels, overload_levels = levels(args.peak_levels), levels(args.overload_levels)
    peaks = [max(r[f"peak greedy {c}"]["ok"]["rps"] for c in peak_levels) for r in rounds]
    where = ("PostgreSQL pinned to the last CPU, tmws and the load to the others" if pin
             else "every CPU shared by PostgreSQL, tmws and the load")
    print(f"tmws-loadgen, {args.workers} Granian worker(s), {args.memories} memories, "
          f"{args.duration:g} s per figure, {where}; medians of {len(rounds)} rounds "
          f"({seconds:.0f} s in all)")
    print("\nmemory recall (use_cache false), closed loop")
    print(f"{'clients':>8} {'conns':>5} {'2xx/s':>7} {'vs peak':>8} {'p50 2xx':>9} "
          f"{'p99 2xx':>9}  other answers (one round)")
    rows = [("", "peak greedy", c) for c in peak_levels] + \
        [(mode, f"overload {mode}", c) for mode in CLIENTS for c in overload_levels]
    for label, prefix, c in rows:
        runs = [r[f"{prefix} {c}"] for r in rounds]
        ok = med([f["ok"]["rps"] for f in runs])
        ratio = med([f["ok"]["rps"] / p if p else 0.0 for f, p in zip(runs, peaks, strict=True)])
        p50 = med([f["ok"]["p50_ms"] for f in runs])
        p99 = med([f["ok"]["p99_ms"] for f in runs])
        print(f"{label:>8} {c:>5} {ok:>7.0f} {ratio:>8.0%} {p50:>7.1f}ms {p99:>7.1f}ms  "
              f"{refusals(runs[len(runs) // 2])}")
    print(f"peak (median of each round's best): {med(peaks):.0f} 2xx/s; budget {BUDGET_MS} ms "
          "(TMWS_PATTERN_MEMORY_TIMEOUT)")
    alone = [r["infra"]["ok"]["rps"] for r in rounds]
    print(f"\ninfrastructure miss, open loop at {args.infra_rate:g}/s: alone "
          f"{med(alone):.0f} 2xx/s, p50 {med([r['infra']['ok']['p50_ms'] for r in rounds]):.1f}"
          f" ms, p99 {med([r['infra']['ok']['p99_ms'] for r in rounds]):.1f} ms")
    for mode in CLIENTS:
        for c in overload_levels:
            runs = [r[f"beside {mode} {c}"] for r in rounds]
            ratio = med([f["infra"]["ok"]["rps"] / a if a else 0.0
                         for f, a in zip(runs, alone, strict=True)])
            print(f"  beside {mode} memory clients at {c:>3} connections: "
                  f"{med([f['infra']['ok']['rps'] for f in runs]):>5.0f} 2xx/s ({ratio:.0%} of "
                  f"alone), p50 {med([f['infra']['ok']['p50_ms'] for f in runs]):.1f} ms, "
                  f"p99 {med([f['infra']['ok']['p99_ms'] for f in runs]):.1f} ms; memory "
                  f"meanwhile {med([f['memory']['ok']['rps'] for f in runs]):.0f} 2xx/s")


if __name__ == "__main__":
    main()
