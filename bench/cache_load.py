"""The result cache through ``engine.execute``: L1 hit, L2 hit and miss vs bare baselines,
and the hit rate of a replayed Zipf workload on one and on two instances sharing Redis.

Real engines (``create_pattern_execution_engine``) on Redis database 14 (``--redis-url``;
flushed first; no other database is touched) and the embedded PostgreSQL in a temporary
directory (or ``--database-url``). Latency of an infrastructure query (``run tool
vector_search with k=<n>``, pattern execute_mcp_tool, whose handler touches no database),
each call timed alone with ``perf_counter_ns``, interleaved round by round with the
baselines measured in the same run:

- L1 hit: one cached query, repeated;
- L2 hit: a second engine on the same Redis asks queries the first computed, its L1 cleared
  (``cache.clear_local()``, untimed) before every call, so each lookup goes to Redis;
- miss: queries never seen (``use_cache=True``): Redis GET miss, routing, handler, SET;
- baselines: a bare ``dict`` lookup of a 32-hex-digit key, and a bare redis-py asyncio
  ``GET`` (same client library and pool settings as tmws) of a key holding a value the
  size of a cached result.

Then a replayed workload: requests drawn by Zipf(s) from distinct infrastructure and memory
queries, the memory ones recalling from a namespace holding a few hundred memories, with
1% of requests storing a memory there (which moves that namespace's generation, so its
cached memory results are never read again). Replayed through two engines alternating
(two workers sharing Redis), then through one engine after a FLUSHDB.

    .venv/bin/python bench/cache_load.py [--rounds 20] [--requests 20000] [--distinct 2000]
        [--redis-url redis://127.0.0.1:6379/14] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from bench._postgres import add_database_option, server_database_env
from bench._smoke import parse_args
from tmws.cache import _ENVELOPE, _RESULT_PREFIX  # the stored form of a result
from tmws.config import Settings
from tmws.engine import PatternExecutionEngine, create_pattern_execution_engine
from tmws.models import ExecutionResult

REDIS_URL = "redis://127.0.0.1:6379/14"
NAMESPACE = "bench"
TOOLS = ("vector_search", "memory_search", "semantic_analysis", "code_index", "web_fetch",
         "file_reader", "sql_query", "graph_walk")
VERBS = ("run tool", "execute tool", "call tool", "run mcp", "call function")


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def settings_for(data_dir: str, redis_url: str, database_url: str | None) -> Settings:
    return Settings.from_env({"TMWS_REDIS_URL": redis_url, "TMWS_LOG_LEVEL": "WARNING",
                              **server_database_env(database_url, data_dir)})


# --- latency ----------------------------------------------------------------------------

async def measure_latency(a: PatternExecutionEngine, b: PatternExecutionEngine, redis_url: str,
                          rounds: int, fast: int, misses: int) -> dict[str, list[float]]:
    """µs per call of each operation, the operations interleaved round by round (the order
    rotating), ``fast`` calls of each fast path and ``misses`` misses per round."""
    hit_query = "run tool vector_search with k=10"
    first = await a.execute(hit_query)
    assert first.success and not first.cache_hit, first
    client: Any = aioredis.from_url(redis_url, max_connections=50, socket_timeout=5.0,
                                    socket_connect_timeout=5.0, retry_on_timeout=False)
    stored = await client.keys("tmws:r:*")  # the hit query's entry, the only one so far
    assert len(stored) == 1, stored
    value_size = int(await client.strlen(stored[0]))
    # Queries the first engine computed; the second engine reads them from Redis.
    l2_queries = [f"run tool vector_search with k={1000 + i}" for i in range(fast)]
    for q in l2_queries:
        assert not (await a.execute(q)).cache_hit
    await a.execute(hit_query)  # back in L1 (those may have pushed it out of the LRU)
    await client.set("bench:bare", os.urandom(value_size))
    rng = random.Random(5)
    keys = [f"{rng.getrandbits(128):032x}" for _ in range(1000)]
    table = {k: (1.0e9, b"x" * value_size) for k in keys}
    probe = keys[rng.randrange(len(keys))]
    miss_counter = iter(range(10**9))

    times: dict[str, list[float]] = {k: [] for k in (
        "timer", "dict", "redis_get", "l1", "l2", "miss")}

    async def run_dict() -> None:
        t = times["dict"]
        for _ in range(fast):
            started = time.perf_counter_ns()
            table.get(probe)
            t.append((time.perf_counter_ns() - started) / 1000)
        t = times["timer"]
        for _ in range(fast):
            started = time.perf_counter_ns()
            t.append((time.perf_counter_ns() - started) / 1000)

    async def run_redis() -> None:
        t = times["redis_get"]
        for _ in range(fast):
            started = time.perf_counter_ns()
            raw = await client.get("bench:bare")
            t.append((time.perf_counter_ns() - started) / 1000)
            assert len(raw) == value_size

    async def run_l1() -> None:
        t = times["l1"]
        for _ in range(fast):
            started = time.perf_counter_ns()
            r = await a.execute(hit_query)
            t.append((time.perf_counter_ns() - started) / 1000)
            assert r.metadata["cache_tier"] == "local"

    async def run_l2() -> None:
        t = times["l2"]
        for q in l2_queries:
            b.cache.clear_local()
            started = time.perf_counter_ns()
            r = await b.execute(q)
            t.append((time.perf_counter_ns() - started) / 1000)
            assert r.metadata["cache_tier"] == "redis"

    async def run_miss() -> None:
        t = times["miss"]
        for _ in range(misses):
            q = f"run tool vector_search with k={next(miss_counter)} seed={rng.getrandbits(32)}"
            started = time.perf_counter_ns()
            r = await a.execute(q, use_cache=True)
            t.append((time.perf_counter_ns() - started) / 1000)
            assert r.success and not r.cache_hit

    steps = [run_dict, run_redis, run_l1, run_l2, run_miss]
    try:
        for _ in range(2):  # warm-up, discarded
            for step in steps:
                await step()
        for values in times.values():
            values.clear()
        for i in range(rounds):
            gc.collect()
            shift = i % len(steps)
            for step in steps[shift:] + steps[:shift]:
                await step()
    finally:
        await client.aclose()
    times["value_bytes"] = [float(value_size)]
    return times


# --- replayed workload ------------------------------------------------------------------

def vocabulary(rng: random.Random, n: int) -> list[str]:
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(consonants) + rng.choice(vowels)
                        for _ in range(rng.choice((2, 3)))))
    return sorted(out)


def distinct_queries(n: int, memory_share: float, topics: list[str],
                     rng: random.Random) -> list[tuple[str, str]]:
    """``n`` distinct (kind, query): infrastructure tool calls and memory recalls."""
    n_memory = round(n * memory_share)
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < n - n_memory:
        q = f"{rng.choice(VERBS)} {rng.choice(TOOLS)} with k={rng.randint(1, 200)}"
        if q not in seen:
            seen.add(q)
            out.append(("infrastructure", q))
    while len(out) < n:
        words = rng.sample(topics, rng.choice((1, 2, 2, 3)))
        q = f"recall memories about {' '.join(words)}"
        if q not in seen:
            seen.add(q)
            out.append(("memory", q))
    rng.shuffle(out)  # popularity rank is independent of kind
    return out


def workload(distinct: list[tuple[str, str]], requests: int, s: float, write_share: float,
             topics: list[str], rng: random.Random) -> list[tuple[str, str]]:
    """(kind, query) requests: Zipf(s) over ``distinct`` by rank, ``write_share`` stores."""
    cum: list[float] = []
    total = 0.0
    for rank in range(len(distinct)):
        total += 1 / (rank + 1) ** s
        cum.append(total)
    out: list[tuple[str, str]] = []
    for _ in range(requests):
        if rng.random() < write_share:
            out.append(("write", f"remember {' '.join(rng.sample(topics, 6))}"))
        else:
            out.append(rng.choices(distinct, cum_weights=cum)[0])
    return out


async def replay(engines: Sequence[PatternExecutionEngine],
                 requests: list[tuple[str, str]]) -> dict[str, Any]:
    ctx = {"namespace": NAMESPACE}
    reads = hits = 0
    by_tier = {"local": 0, "redis": 0}
    by_kind: dict[str, list[int]] = {"infrastructure": [0, 0], "memory": [0, 0]}
    before = [e.get_stats() for e in engines]
    started = time.perf_counter()
    for i, (kind, query) in enumerate(requests):
        engine = engines[i % len(engines)]
        result = await engine.execute(query, context=ctx)
        assert result.success, (query, result.error)
        if kind == "write":
            continue
        reads += 1
        by_kind[kind][0] += 1
        if result.cache_hit:
            hits += 1
            by_kind[kind][1] += 1
            by_tier[result.metadata["cache_tier"]] += 1
    elapsed = time.perf_counter() - started
    after = [e.get_stats() for e in engines]

    def delta(path: Sequence[str]) -> int:
        total = 0
        for b, a in zip(before, after, strict=True):
            x: Any = a
            y: Any = b
            for p in path:
                x, y = x[p], y[p]
            total += int(x) - int(y)
        return total

    l1_hits, l1_misses = delta(("cache_stats", "local", "hits")), delta(
        ("cache_stats", "local", "misses"))
    l2_hits, l2_misses = delta(("cache_stats", "redis", "hits")), delta(
        ("cache_stats", "redis", "misses"))
    executions, engine_hits = delta(("total_executions",)), delta(("cache_hits",))
    return {
        "requests": len(requests), "reads": reads, "hits": hits, "tiers": by_tier,
        "by_kind": by_kind, "seconds": elapsed,
        "l1": (l1_hits, l1_hits + l1_misses), "l2": (l2_hits, l2_hits + l2_misses),
        "engine": (engine_hits, executions),
        "evictions": delta(("cache_stats", "local", "evictions")),
        "engine_rates": [100 * (a["cache_hits"] - b["cache_hits"])
                         / max(1, a["total_executions"] - b["total_executions"])
                         for b, a in zip(before, after, strict=True)],
    }


async def seed_memories(engine: PatternExecutionEngine, topics: list[str], n: int,
                        rng: random.Random) -> None:
    for _ in range(n):
        await engine.memory.store(NAMESPACE, " ".join(rng.choices(topics, k=12)) + ".",
                                  tags=rng.sample(topics, 2),
                                  importance=round(rng.random(), 2))


# --- main -------------------------------------------------------------------------------

def fmt(us: float) -> str:
    return f"{us:.3f}" if us < 1 else f"{us:.2f}" if us < 10 else f"{us:.1f}" if us < 100 \
        else f"{us:.0f}"


def rate(pair: tuple[int, int]) -> str:
    hits, total = pair
    return f"{100 * hits / total:.1f}% ({hits:,}/{total:,})" if total else "-"


async def flushdb(redis_url: str) -> None:
    client: Any = aioredis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def redis_footprint(redis_url: str) -> dict[str, Any]:
    """What the cached results take in Redis, by pattern: ``MEMORY USAGE`` of every result
    key (key, value and Redis's own overhead) and the value's length."""
    client = aioredis.from_url(redis_url)
    try:
        by_type: dict[str, list[tuple[int, int]]] = {}
        async for key in client.scan_iter(match=_RESULT_PREFIX + "*", count=1000):
            raw = await client.get(key)
            usage = await client.memory_usage(key, samples=0)
            if not isinstance(raw, bytes) or usage is None:
                continue  # expired between SCAN and GET
            result = msgspec.msgpack.decode(raw[_ENVELOPE.size:], type=ExecutionResult)
            by_type.setdefault(result.pattern_name or "?", []).append((int(usage), len(raw)))
    finally:
        await client.aclose()
    return {"by_type": by_type}


async def main_async(args: argparse.Namespace) -> None:
    begun = time.perf_counter()
    await flushdb(args.redis_url)
    rng = random.Random(17)
    topics = vocabulary(rng, 60)
    with tempfile.TemporaryDirectory(prefix="tmws-bench-cache-") as tmp:
        settings = settings_for(tmp, args.redis_url, args.database_url)
        a = await create_pattern_execution_engine(settings)
        b = await create_pattern_execution_engine(settings)
        try:
            print(f"engines ready in {time.perf_counter() - begun:.1f}s", flush=True)
            lat = await measure_latency(a, b, args.redis_url, args.rounds, args.fast,
                                        args.misses)
            print(f"latency measured ({time.perf_counter() - begun:.0f}s)", flush=True)

            await seed_memories(a, topics, args.memories, rng)
            distinct = distinct_queries(args.distinct, args.memory_share, topics, rng)
            requests = workload(distinct, args.requests, args.zipf, args.writes, topics, rng)
            seen = len({q for k, q in requests if k != "write"})
            await flushdb(args.redis_url)  # both runs start from a cold Redis
            a.cache.clear_local()
            b.cache.clear_local()
            two = await replay([a, b], requests)
            print(f"two-instance replay in {two['seconds']:.1f}s", flush=True)
            await flushdb(args.redis_url)
            a.cache.clear_local()
            one = await replay([a], requests)
            print(f"one-instance replay in {one['seconds']:.1f}s", flush=True)
            footprint = await redis_footprint(args.redis_url)
        finally:
            await a.close()
            await b.close()
        await flushdb(args.redis_url)

    median = {k: pct(v, 0.5) for k, v in lat.items()}
    p99 = {k: pct(v, 0.99) for k, v in lat.items()}
    n = {k: len(v) for k, v in lat.items()}
    rows = [
        ("bare dict lookup (32-hex key)", "dict", None),
        ("bare redis-py asyncio GET", "redis_get", None),
        ("execute: L1 hit", "l1", "dict"),
        ("execute: L2 hit (Redis)", "l2", "redis_get"),
        ("execute: miss (GET miss + SET)", "miss", "redis_get"),
    ]
    print(f"\nInfrastructure query through engine.execute, {args.rounds} interleaved rounds; "
          f"value {int(lat['value_bytes'][0])} bytes in Redis; µs")
    print(f"  {'operation':<32} {'calls':>7} {'median':>8} {'p99':>8} {'median ratio':>22}"
          f" {'p99 ratio':>10}")
    for label, key, base in rows:
        ratio = p99ratio = ""
        if base is not None:
            ratio = f"{median[key] / median[base]:.1f}x {'dict' if base == 'dict' else 'GET'}"
            p99ratio = f"{p99[key] / p99[base]:.1f}x"
        print(f"  {label:<32} {n[key]:>7,} {fmt(median[key]):>8} {fmt(p99[key]):>8}"
              f" {ratio:>22} {p99ratio:>10}")
    print(f"  (perf_counter_ns pair alone: median {fmt(median['timer'])}, "
          f"p99 {fmt(p99['timer'])}; dict net of it: {fmt(median['dict'] - median['timer'])})")
    l1_net = median["l1"] / max(median["dict"] - median["timer"], 1e-3)
    print(f"  L1 hit / dict lookup net of the timer: {l1_net:.0f}x")

    print(f"\nReplayed workload: {args.requests:,} requests, Zipf(s={args.zipf}) over "
          f"{args.distinct:,} distinct queries ({args.memory_share:.0%} memory recalls in "
          f"namespace {NAMESPACE!r}, {args.memories} memories seeded), {args.writes:.0%} "
          f"stores; {seen:,} distinct queries actually drawn")
    print(f"  {'run':<22} {'reads hit':>24} {'infra':>8} {'memory':>8} {'L1 hit rate':>24}"
          f" {'L2 hit rate':>22} {'engine cache_hit_rate':>26} {'req/s':>7}")
    for label, r in (("two engines, alternate", two), ("one engine", one)):
        kinds = r["by_kind"]
        infra = 100 * kinds["infrastructure"][1] / max(1, kinds["infrastructure"][0])
        mem = 100 * kinds["memory"][1] / max(1, kinds["memory"][0])
        engine_rates = " / ".join(f"{x:.1f}%" for x in r["engine_rates"])
        print(f"  {label:<22} {rate((r['hits'], r['reads'])):>24} {infra:>7.1f}% {mem:>7.1f}%"
              f" {rate(r['l1']):>24} {rate(r['l2']):>22} {engine_rates:>26}"
              f" {r['requests'] / r['seconds']:>7.0f}")
        print(f"  {'':<22} hits by tier: L1 {r['tiers']['local']:,}, L2 {r['tiers']['redis']:,};"
              f" L1 evictions {r['evictions']:,}")
    print("  * the engines' cache_hits / total_executions over the replay (stores count as"
          " executions), one figure per engine")
    print("\nRedis memory per cached result after the one-engine replay (MEMORY USAGE of the"
          " key: key, value and Redis's overhead; the value is the expiry/generation"
          " envelope and the msgpack result), bytes")
    print(f"  {'pattern':<16} {'results':>8} {'median':>8} {'p95':>8} {'max':>8}"
          f" {'median value':>13}")
    total = used = 0
    for kind, rows in sorted(footprint["by_type"].items()):
        usage = sorted(u for u, _ in rows)
        values = sorted(v for _, v in rows)
        total += len(rows)
        used += sum(usage)
        print(f"  {kind:<16} {len(rows):>8,} {pct(usage, 0.5):>8.0f} {pct(usage, 0.95):>8.0f}"
              f" {usage[-1]:>8,} {pct(values, 0.5):>13.0f}")
    print(f"  all: {used:,} bytes for {total:,} results, {used / max(total, 1):,.0f} per result"
          " (Redis's instance-wide used_memory also moves with other databases: not used)")
    print(f"\ntotal {time.perf_counter() - begun:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fast", type=int, default=500, help="fast-path calls per round")
    parser.add_argument("--misses", type=int, default=100, help="misses per round")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--distinct", type=int, default=2_000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--memory-share", type=float, default=0.2)
    parser.add_argument("--writes", type=float, default=0.01)
    parser.add_argument("--memories", type=int, default=300)
    parser.add_argument("--redis-url", default=REDIS_URL, help="a database it may flush")
    add_database_option(parser)
    asyncio.run(main_async(parse_args(parser, rounds=1, fast=5, misses=3, requests=60,
                                      distinct=20, memories=10)))


if __name__ == "__main__":
    main()
