"""Every bench script with a command line, in smoke mode (``--smoke``: tiny sizes, the real code
path end to end), so that a script that no longer runs fails ``make test`` the day it breaks.

Each runs as ``make bench-*`` runs it (``python bench/<script>.py``), on a scratch database of
the session's PostgreSQL (``--database-url``) and, where it flushes Redis, on a redis-server of
the test's own. Which scripts are checked elsewhere, and why: bench/README.md, "Smoke runs".
Smoke figures are never asserted: only that the script finished and printed its report.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str) -> str:
    """``bench/<name>.py --smoke *args`` without this environment's TMWS_* settings; its
    standard output, once it exited 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (f"bench/{name}.py --smoke exited with {done.returncode}\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


async def smoke(name: str, *args: str) -> str:
    return await asyncio.to_thread(run_script, name, *args)


async def test_hit_profile_times_every_step_of_a_hit(migrated_database: str) -> None:
    out = await smoke("hit_profile", "--database-url", migrated_database)
    assert "whole request: TmwsApp (as served)" in out
    assert "components (each alone)" in out and "CacheManager.get (L1 hit)" in out


async def test_cache_load_measures_tiers_and_replays(migrated_database: str,
                                                    private_redis: PrivateRedis) -> None:
    out = await smoke("cache_load", "--database-url", migrated_database,
                      "--redis-url", private_redis.url)
    assert "execute: L2 hit (Redis)" in out
    assert "two engines, alternate" in out and "one engine" in out


async def test_memory_load_compares_with_bare_sql_and_exact_search(fresh_database: str
                                                                   ) -> None:
    out = await smoke("memory_load", "--database-url", fresh_database)
    assert "loaded 300 memories" in out
    assert "recall@10 against exact search" in out and "hnsw ef 100 strict" in out
    assert "hnsw ef 100 relaxed" in out


async def test_retrieval_quality_ranks_both_rankings(fresh_database: str) -> None:
    out = await smoke("retrieval_quality", "--database-url", fresh_database)
    assert "before (legacy_recall.py)" in out and "MemoryStore.search" in out


async def test_routing_load_times_both_stages_and_the_model() -> None:
    out = await smoke("routing_load")
    assert "default library:" in out and "OpenAI-compatible, loopback" in out
    assert "corpus N=15 x 5 examples" in out


async def test_http_load_drives_every_case_with_wrk(migrated_database: str,
                                                    private_redis: PrivateRedis) -> None:
    out = await smoke("http_load", "--database-url", migrated_database,
                      "--redis-url", private_redis.url)
    assert "(a) infra, L1 hit, Redis" in out and "(d) hybrid semantic_search" in out
    assert "(a)/bare per round" in out


async def test_overload_reports_peak_overload_and_beside(migrated_database: str) -> None:
    out = await smoke("overload", "--database-url", migrated_database)
    assert "memory recall (use_cache false), closed loop" in out
    assert "beside greedy memory clients" in out


async def test_profile_writes_flame_graphs(migrated_database: str, tmp_path: Path) -> None:
    out = await smoke("profile", "--database-url", migrated_database, "--out", str(tmp_path))
    assert "Python frames by total time" in out
    for suffix in (".svg", ".speedscope.json", "-top.txt"):
        assert (tmp_path / f"miss{suffix}").stat().st_size > 0


async def test_capacity_measures_cpu_per_request_of_every_case(private_redis: PrivateRedis
                                                                ) -> None:
    out = await smoke("capacity", "--redis-url", private_redis.url)
    assert "CPU ms per 2xx answer" in out
    for case in ("infra_hit", "infra_miss", "recall", "hybrid", "store"):
        assert f"  {case} " in out
