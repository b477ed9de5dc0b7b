"""Matcher benchmarks: Rust core (cache off) vs Python ``re`` priority loop vs hyperscan.

Run: ``.venv/bin/pytest bench -p no:cacheprovider --benchmark-only``.
Each benchmark times one pass over a fixed slice of queries; per-query figures are the
median pass divided by the slice length. Answers are checked against the corpus's
``expected`` before anything is timed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from functools import cache

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench._reference import SIZES, Corpus, Hyperscan, ReLoop, load
from bench.conftest import NOTES, RESULTS, timings
from tmws._native import Matcher

SLICE = 1000
# The `re` loop is ~1,000x slower: fewer queries keep the run short.
RE_SLICE = {15: 500, 100: 200, 1000: 50}
ROUNDS = {"rust": 30, "hyperscan": 30, "re": 5}


@cache
def corpus(n: int) -> Corpus:
    return load(n)


@cache
def engine(name: str, n: int) -> Callable[[str], str | None]:
    c = corpus(n)
    if name == "rust":
        return Matcher(c.specs, cache_capacity=0).best
    if name == "hyperscan":
        return Hyperscan(c).best
    return ReLoop(c).best


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", ["rust", "hyperscan"])
def test_all_answers_match_expected(name: str, n: int) -> None:
    c = corpus(n)
    best = engine(name, n)
    wrong = [(q, e, best(q)) for q, e in zip(c.queries, c.expected, strict=True) if best(q) != e]
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("subset", ["match", "nomatch"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", ["rust", "re", "hyperscan"])
def test_matcher(benchmark: BenchmarkFixture, name: str, n: int, subset: str) -> None:
    c = corpus(n)
    size = RE_SLICE[n] if name == "re" else SLICE
    expected = dict(zip(c.queries, c.expected, strict=True))
    queries = c.split()[subset][:size]
    best = engine(name, n)
    for q in queries:
        assert best(q) == expected[q], q

    def run() -> None:
        for q in queries:
            best(q)

    benchmark.group = f"N={n} {subset}"
    benchmark.extra_info["queries_per_round"] = len(queries)
    benchmark.pedantic(run, rounds=ROUNDS[name], iterations=1, warmup_rounds=1)
    per_query = timings(benchmark).median / len(queries)
    benchmark.extra_info["median_per_query_us"] = per_query * 1e6
    RESULTS[(name, n, subset)] = per_query


def test_build_time_and_memory(benchmark: BenchmarkFixture) -> None:
    """Builds the N=1000 matcher in a fresh interpreter: wall time and resident memory."""
    script = textwrap.dedent(
        """
        import json, sys, time
        sys.path.insert(0, "bench")

        def rss_kib():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

        import tmws.errors
        from tmws._native import Matcher
        from _reference import load
        c = load(1000)
        before = rss_kib()
        t = time.perf_counter()
        m = Matcher(c.specs, cache_capacity=0)
        build = time.perf_counter() - t
        after_build = rss_kib()
        for q in c.queries:
            m.best(q)
        after = rss_kib()
        print(json.dumps({"build_s": build, "rss_before_kib": before,
                          "rss_after_build_kib": after_build, "rss_after_10k_kib": after}))
        """
    )

    def measure() -> dict[str, float]:
        out = subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True
        )
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    result = benchmark.pedantic(measure, rounds=3, iterations=1)
    benchmark.group = "build N=1000"
    benchmark.extra_info.update(result)
    NOTES.append(
        "N=1000 build: subprocess median {:.0f} ms (Matcher() itself {:.0f} ms); "
        "RSS {:.0f} MiB before build, {:.0f} MiB after build, "
        "{:.0f} MiB after 10,000 queries".format(
            timings(benchmark).median * 1000,
            result["build_s"] * 1000,
            result["rss_before_kib"] / 1024,
            result["rss_after_build_kib"] / 1024,
            result["rss_after_10k_kib"] / 1024,
        )
    )
