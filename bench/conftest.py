"""Benchmark session setup and the closing summary table (medians per query)."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

# (engine, n, subset) -> median seconds per query; filled by the benchmarks.
RESULTS: dict[tuple[str, int, str], float] = {}
# Free-form lines (build time, memory) printed after the table.
NOTES: list[str] = []


def timings(benchmark: BenchmarkFixture) -> Any:
    """The ``Stats`` of the benchmark's last run (``.median``, ``.data``)."""
    metadata = benchmark.stats
    assert metadata is not None, "benchmark.pedantic has not run yet"
    return metadata.stats


def _fmt(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.2f} µs"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from bench import _sla

    if _sla.SUMMARY or _sla.RELATIVE:
        terminalreporter.section("SLA gates: ms, open loop, against performance_targets")
        for line in _sla.summary_lines():
            terminalreporter.write_line(line)
    if not RESULTS and not NOTES:
        return
    tr = terminalreporter
    tr.section("matcher: median per query (cache off)")
    header = (
        f"{'N':>5} {'queries':>8} | {'rust':>10} {'re loop':>10} {'hyperscan':>10} "
        f"| {'re/rust':>8} {'rust/hs':>8}"
    )
    tr.write_line(header)
    tr.write_line("-" * len(header))
    keys = sorted({(n, subset) for _, n, subset in RESULTS})
    for n, subset in keys:
        rust = RESULTS.get(("rust", n, subset))
        re_ = RESULTS.get(("re", n, subset))
        hs = RESULTS.get(("hyperscan", n, subset))
        cells = [_fmt(x) if x is not None else "-" for x in (rust, re_, hs)]
        speedup = f"{re_ / rust:.0f}x" if rust and re_ else "-"
        vs_hs = f"{rust / hs:.2f}x" if rust and hs else "-"
        tr.write_line(
            f"{n:>5} {subset:>8} | {cells[0]:>10} {cells[1]:>10} {cells[2]:>10} "
            f"| {speedup:>8} {vs_hs:>8}"
        )
    for line in NOTES:
        tr.write_line(line)
