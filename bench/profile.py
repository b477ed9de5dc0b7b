"""Profile a served tmws under load with py-spy: every Granian worker, native frames included.

    make profile            # or: .venv/bin/python bench/profile.py [--seconds 15] [--workers 2]
                            #     [--scenarios l1-hit,miss,recall] [--smoke]

Starts ``tmws serve`` (embedded PostgreSQL in a temporary directory or ``--database-url``,
Redis when reachable at TMWS_REDIS_URL), stores memories, and for each scenario — an L1 hit,
a miss of an infrastructure pattern, a memory recall (a miss every time) — drives
``tmws-loadgen`` (closed loop) while ``py-spy record --subprocesses`` samples the supervisor
and every worker it spawned (profiling only the supervisor would show it waiting). Writes
into ``--out`` (default ``.profiles/``) per scenario a flame graph (``.svg``) and a
speedscope file (``.speedscope.json``, open it at https://www.speedscope.app), and prints
the frames with the most samples: self time (where the CPU is) and total time (what it is
for).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._postgres import add_database_option, server_database_env  # noqa: E402
from bench._sla import LOADGEN, build_loadgen  # noqa: E402
from bench._smoke import parse_args  # noqa: E402
from tests.loopback import base_url, free_port, stop, wait_healthy  # noqa: E402

SCENARIOS = {
    "l1-hit": ("one query, answered from the in-process cache", False),
    "miss": ("an infrastructure query that is never cached twice", True),
    "recall": ("memory recall of distinct topics: full text + vector + RRF", True),
}
TOPICS = ("deploy", "rollback", "database", "latency", "auth", "cache", "billing", "alerts")


def bodies(scenario: str, count: int) -> list[dict[str, Any]]:
    rng = random.Random(3)
    if scenario == "l1-hit":
        return [{"query": "check redis health"}]
    if scenario == "miss":
        return [{"query": f"check redis health on node {i}"} for i in range(count)]
    return [{"query": f"recall memories about {rng.choice(TOPICS)} {rng.choice(TOPICS)} {i}"}
            for i in range(count)]


def seed(base: str, count: int) -> None:
    rng = random.Random(5)
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(count):
            words = " ".join(rng.choice(TOPICS) for _ in range(6))
            response = client.post("/api/v1/memories", json={
                "content": f"note {i}: {words}", "tags": [rng.choice(TOPICS)]})
            if response.status_code != 201:
                raise SystemExit(f"storing memory {i}: {response.status_code} {response.text}")


def top_frames(speedscope: Path, limit: int) -> list[str]:
    """Self and total sample counts per frame, from a speedscope file of sampled profiles."""
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]
    own: collections.Counter[int] = collections.Counter()
    total: collections.Counter[int] = collections.Counter()
    samples = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            samples += weight
            if stack:
                own[stack[-1]] += weight
            for index in set(stack):
                total[index] += weight

    def name(index: int) -> str:
        frame = frames[index]
        where = Path(frame.get("file") or "?").name
        line = frame.get("line")
        return f"{frame['name']} ({where}{f':{line}' if line else ''})"

    unit = data["profiles"][0].get("unit", "samples") if data["profiles"] else "samples"
    lines = [f"{samples:.1f} {unit} sampled over every thread of every process; self = in that "
             "frame, total = with its callees",
             f"{'self':>6} {'total':>6}  frame"]
    for index, count in own.most_common(limit):
        lines.append(f"{100 * count / samples:>5.1f}% {100 * total[index] / samples:>5.1f}%  "
                     f"{name(index)}")
    # Granian's runtime (sched_yield, send, epoll) dominates self time; what a request costs
    # in Python is clearer from the Python frames by total time.
    python = [(count, index) for index, count in total.items()
              if (frames[index].get("file") or "").endswith(".py")
              and not _is_plumbing(frames[index]["name"])]
    lines += ["", "Python frames by total time (with their callees):",
              f"{'total':>6}  frame"]
    for count, index in sorted(python, reverse=True)[:limit]:
        lines.append(f"{100 * count / samples:>5.1f}%  {name(index)}")
    return lines


# Frames every request passes through on its way in: their total says nothing.
_PLUMBING = frozenset({"_run", "run", "_run_once", "run_forever", "run_until_complete",
                       "<module>", "_run_code", "_run_module_as_main", "main", "__call__",
                       "serve", "spawn_main", "_main", "_bootstrap", "_bootstrap_inner",
                       "future_watcher", "wrapped", "_spawn_asgi_lifespan_worker",
                       "_spawn_asgi_worker", "worker", "target", "start", "_launch",
                       "__init__", "_Popen", "_serve", "run_coroutine"})


def _is_plumbing(frame_name: str) -> bool:
    # speedscope names methods "Class.method": judge by the method.
    return frame_name.rsplit(".", 1)[-1] in _PLUMBING


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="per recording")
    parser.add_argument("--slack", type=float, default=6,
                        help="seconds the load runs beyond the two recordings")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated subset of: " + ",".join(SCENARIOS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--memories", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / ".profiles")
    parser.add_argument("--top", type=int, default=15)
    add_database_option(parser)
    args = parse_args(parser, seconds=1, slack=1, scenarios="miss", workers=1, connections=2,
                      memories=5, top=5)
    scenarios = {name: SCENARIOS[name] for name in args.scenarios.split(",")}
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy (make install-test)")
    build_loadgen()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = base_url(port)
    with tempfile.TemporaryDirectory(prefix="tmws-profile-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
        env.update({"TMWS_API_HOST": "127.0.0.1", "TMWS_API_PORT": str(port),
                    "TMWS_WORKERS": str(args.workers),
                    **server_database_env(args.database_url, tmp),
                    "TMWS_LOG_LEVEL": "WARNING", "TMWS_RATE_LIMIT_ENABLED": "false"})
        if os.environ.get("TMWS_REDIS_URL"):
            env["TMWS_REDIS_URL"] = os.environ["TMWS_REDIS_URL"]
        server = subprocess.Popen([sys.executable, "-m", "tmws", "serve"], env=env,
                                  stdout=subprocess.DEVNULL)
        try:
            wait_healthy(base, server)
            seed(base, args.memories)
            print(f"tmws serve pid {server.pid}, {args.workers} worker(s), "
                  f"{args.memories} memories; py-spy {py_spy}", flush=True)
            for scenario, (what, _) in scenarios.items():
                count = 200_000
                body_file = Path(tmp) / f"{scenario}.jsonl"
                body_file.write_text("".join(json.dumps(b) + "\n"
                                             for b in bodies(scenario, count)))
                load = subprocess.Popen(
                    [str(LOADGEN), "--url", f"{base}/api/v1/execute", "--bodies",
                     str(body_file), "--connections", str(args.connections), "--warmup", "1",
                     "--duration", str(2 * args.seconds + args.slack)], stdout=subprocess.PIPE,
                    text=True)
                time.sleep(2)
                outputs = {}
                for kind, suffix in (("flamegraph", ".svg"), ("speedscope", ".speedscope.json")):
                    target = args.out / f"{scenario}{suffix}"
                    spied = subprocess.run(
                        [py_spy, "record", "--pid", str(server.pid), "--subprocesses",
                         "--native", "--rate", "100", "--duration", str(int(args.seconds)),
                         "--format", kind, "--output", str(target)],
                        capture_output=True, text=True)
                    if spied.returncode != 0:
                        load.kill()
                        raise SystemExit(f"py-spy failed: {spied.stderr[-2000:]}")
                    outputs[kind] = target
                report = json.loads(load.communicate(timeout=120)[0])
                top = top_frames(outputs["speedscope"], args.top)
                (args.out / f"{scenario}-top.txt").write_text("\n".join(top) + "\n")
                print(f"\n== {scenario}: {what}; {report['ok']['rps']:.0f} req/s, "
                      f"p50 {report['ok']['p50_ms']:.2f} ms under closed-loop load "
                      f"({args.connections} connections)")
                print(f"   {outputs['flamegraph']}\n   {outputs['speedscope']}")
                for line in top:
                    print("   " + line)
        finally:
            stop(server)


if __name__ == "__main__":
    main()
