"""Open-loop load and the SLA gate, shared by ``bench/test_sla.py``.

Requests are scheduled at a fixed arrival rate and each latency is measured from the time
the request *should* have been sent: when the service falls behind, the queueing shows in
the figures instead of slowing the load down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tmws.patterns import default_library_path, load_pattern_file

ROOT = Path(__file__).resolve().parents[1]
LOADGEN = ROOT / "target" / "release" / "tmws-loadgen"
PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def targets(pattern_file: str | Path | None = None) -> dict[str, dict[str, float]]:
    """The pattern file's ``performance_targets`` in ms, by pattern type."""
    library = load_pattern_file(pattern_file or default_library_path())
    return {str(kind): {"p50": t.p50, "p95": t.p95, "p99": t.p99}
            for kind, t in library.performance_targets.items()}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(q * n))."""
    rank = min(len(sorted_values), max(1, math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


@dataclass
class Figures:
    """One case's outcome: latencies in ms and the answers that were not 2xx/success."""

    case: str
    pattern_type: str
    latencies_ms: list[float]
    failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def percentiles(self) -> dict[str, float]:
        ordered = sorted(self.latencies_ms)
        return {name: percentile(ordered, q) for name, q in PERCENTILES}


# Filled by the gates, printed by bench/conftest.py at the end of the run.
SUMMARY: list[tuple[Figures, dict[str, float]]] = []
RELATIVE: list[str] = []


def gate(figures: Figures, target: dict[str, float]) -> list[str]:
    """Every broken promise of one case, each naming case, percentile, figure and target."""
    broken = []
    if figures.failures:
        detail = {k: figures.extra[k] for k in ("status_counts", "transport_errors", "unsent",
                                                "failure_reasons")
                  if figures.extra.get(k)}
        broken.append(f"{figures.case}: {figures.failures} of "
                      f"{figures.failures + len(figures.latencies_ms)} requests failed"
                      + (f" ({detail})" if detail else ""))
    for name, value in figures.percentiles().items():
        if value > target[name]:
            broken.append(f"{figures.case}: {name} = {value:.1f} ms > target {target[name]:g} ms"
                          f" ({figures.pattern_type})")
    return broken


def margins(figures: Figures, target: dict[str, float]) -> dict[str, float]:
    """Target / figure per percentile: 2.0 means twice as fast as promised."""
    return {name: target[name] / max(value, 1e-3)
            for name, value in figures.percentiles().items()}


async def open_loop(call: Callable[[int], Awaitable[bool]], count: int, rate: float
                    ) -> tuple[list[float], int]:
    """``count`` calls of ``call(i)`` started at ``rate`` per second; (latencies in ms from
    each call's scheduled time, number of calls that returned False or raised)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    latencies: list[float] = []
    failed = 0

    async def one(i: int, intended: float) -> None:
        nonlocal failed
        try:
            ok = await call(i)
        except Exception:  # counted: the gate reports failures
            ok = False
        if ok:
            latencies.append((loop.time() - intended) * 1000)
        else:
            failed += 1

    tasks = []
    for i in range(count):
        intended = start + i / rate
        delay = intended - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, intended)))
    await asyncio.gather(*tasks)
    return latencies, failed


def build_loadgen() -> Path:
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "tmws-loadgen"], cwd=ROOT,
                   check=True)
    return LOADGEN


def loadgen(url: str, bodies: Sequence[dict[str, Any]], *, rate: float, count: int,
            headers: Sequence[str] = (), connections: int = 32, workdir: Path) -> dict[str, Any]:
    """``count`` requests at ``rate``/s (open loop) through tmws-loadgen, with every 2xx
    latency; the bodies are sent in turn."""
    body_file = workdir / f"bodies-{time.monotonic_ns()}.jsonl"
    body_file.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    command = [str(LOADGEN), "--url", url, "--bodies", str(body_file), "--rate", str(rate),
               "--requests", str(count), "--warmup", "0",
               "--connections", str(connections), "--raw"]
    for header in headers:
        command += ["--header", header]
    done = subprocess.run(command, capture_output=True, text=True, timeout=count / rate + 120)
    if done.returncode != 0:
        raise RuntimeError(f"tmws-loadgen failed: {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def summary_lines() -> list[str]:
    """The table of every case: p50/p95/p99 (ms), each over its target and the margin."""
    lines = [f"{'case':<44} {'n':>5} {'p50':>7} {'p95':>7} {'p99':>7}   "
             f"{'targets':>11}  {'min margin':>10}"]
    for figures, target in SUMMARY:
        p = figures.percentiles()
        margin = min(margins(figures, target).values())
        flag = "" if not gate(figures, target) else "  FAILED"
        lines.append(
            f"{figures.case:<44} {len(figures.latencies_ms):>5} {p['p50']:>7.2f} "
            f"{p['p95']:>7.2f} {p['p99']:>7.2f}   "
            f"{target['p50']:g}/{target['p95']:g}/{target['p99']:g}".ljust(75)
            + f"  {margin:>9.1f}x{flag}")
    return lines + RELATIVE
