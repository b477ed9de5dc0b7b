"""In-process cost of one L1-hit ``POST /api/v1/execute``, by component (no sockets, no Granian).

The served app (``tmws.http.app.create_app()``, lifespan included: a real engine on an embedded
PostgreSQL in a temporary directory, no Redis) is driven with a fake ``receive``/``send``;
then each step of the hit path is timed alone. Every figure is thread CPU time
(``time.thread_time_ns``, so time the scheduler gives to other processes does not count) per
call: ``--rounds`` rounds of ``--calls`` calls, rounds interleaved across items, median and
minimum of the rounds. The audit buffer is written out between rounds (as its writer does
every 0.5 s); that writer's CPU per record is reported too.

    .venv/bin/python bench/hit_profile.py [--calls 2000] [--rounds 15]

Served under Granian the same work costs ~2.5x more CPU per request than here (cold caches,
GIL hand-offs with Granian's threads; see bench/README.md), so read these figures as
relative weights. About 15 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUERY = "run tool vector_search"
BODY = b'{"query": "run tool vector_search", "execution_mode": "balanced"}'
HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"),
           (b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


def scope() -> dict[str, Any]:
    """What Granian passes (a fresh dict per request; headers a list of byte pairs)."""
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000), "scheme": "http", "method": "POST",
            "root_path": "", "path": "/api/v1/execute", "raw_path": b"/api/v1/execute",
            "query_string": b"", "headers": HEADERS, "extensions": {}, "state": {}}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": BODY, "more_body": False}


_sent: list[Any] = []


async def send(message: Any) -> None:
    _sent.append(message)


async def start(app: Any) -> tuple[asyncio.Queue[dict[str, str]], asyncio.Task[None]]:
    queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    out: list[Any] = []

    async def lifespan_send(message: Any) -> None:
        out.append(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                   queue.get, lifespan_send))
    while not out:
        await asyncio.sleep(0.05)
    if out[0]["type"] != "lifespan.startup.complete":
        raise SystemExit(f"start-up failed: {out[0]}")
    return queue, task


Item = Callable[[], Awaitable[Any]]


async def measure(items: dict[str, Item | None], calls: int, rounds: int, engine: Any
                  ) -> tuple[dict[str, list[float]], list[float]]:
    times: dict[str, list[float]] = {name: [] for name, fn in items.items() if fn is not None}
    audit_cpu: list[float] = []
    for _ in range(rounds):
        for name in times:
            fn = items[name]
            assert fn is not None
            gc.collect()
            began = time.thread_time_ns()
            for _ in range(calls):
                await fn()
            times[name].append((time.thread_time_ns() - began) / calls / 1000)
            _sent.clear()
            audit = getattr(engine, "audit", None)
            pending = audit.stats().get("pending", 0) if audit is not None else 0
            if audit is not None and pending:
                began = time.process_time_ns()
                await audit.flush()
                audit_cpu.append((time.process_time_ns() - began) / pending / 1000)
    return times, audit_cpu


def report(title: str, times: dict[str, list[float]]) -> None:
    print(title)
    for name, values in times.items():
        print(f"  {statistics.median(values):7.2f}  {min(values):7.2f}   {name}")


def _items(outer: Any, engine: Any) -> tuple[dict[str, Item | None], dict[str, Item | None]]:
    import msgspec

    from tmws._native import cache_key, normalize_query
    from tmws._request_context import RequestIds
    from tmws.http.asgi import Request
    from tmws.http.endpoints import execution as endpoint
    from tmws.http.endpoints._common import check_query, decode, encoder
    from tmws.http.routes import DISPATCHER
    from tmws.models import ExecutionMode

    inner = getattr(outer, "app", outer)

    async def full() -> None:
        await outer(scope(), receive, send)

    async def app_only() -> None:
        await inner(scope(), receive, send)

    async def execute() -> None:
        await engine.execute(QUERY, "balanced", None, True)

    whole: dict[str, Item | None] = {
        "whole request: TmwsApp (as served)": full,
        "whole request: TmwsApp alone": app_only if inner is not outer else None,
        "engine.execute(...)": execute,
    }
    items: dict[str, Item | None] = {}

    def item(name: str) -> Callable[[Item], Item]:
        def register(fn: Item) -> Item:
            items[name] = fn
            return fn
        return register

    async def trivial(scope_: Any, receive_: Any, send_: Any) -> None:
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        await send_({"type": "http.response.body", "body": b"{}"})

    ids = RequestIds()
    item("a two-message ASGI app (reference)")(lambda: trivial(scope(), receive, send))
    sc = scope()

    async def token() -> None:
        ids.identify(sc)
    item("RequestIds.identify (the request id)")(token)

    async def resolve() -> None:
        DISPATCHER.resolve("POST", "/api/v1/execute")
    item("DISPATCHER.resolve")(resolve)

    async def body() -> None:
        await Request(sc, receive, 65536, {}).json_body()
    item("Request(...).json_body()")(body)

    decoder = endpoint._execute_decoder

    async def decode_body() -> None:
        check_query(engine, decode(decoder, BODY).query)
    item("msgspec decode of the body + check_query")(decode_body)

    async def validate() -> None:
        engine._validate(QUERY, "balanced", None)
    item("engine._validate (incl. ExecutionMode('balanced'))")(validate)

    async def match() -> None:
        engine.router.match(QUERY, ExecutionMode.BALANCED)
    item("router.match (Rust matcher; releases the GIL)")(match)

    fingerprint = engine.registry.fingerprint

    async def key_bytes() -> None:
        cache_key(["default", normalize_query(QUERY), "balanced", b"", fingerprint])
    item("normalize_query + cache_key, context part b''")(key_bytes)

    async def key_str() -> None:
        cache_key(["default", normalize_query(QUERY), "balanced", "", fingerprint])
    item("normalize_query + cache_key, context part '' (as now)")(key_str)

    key = cache_key(["default", normalize_query(QUERY), "balanced", b"", fingerprint])
    pattern = engine.router.match(QUERY, ExecutionMode.BALANCED)

    async def cache_get() -> None:
        await engine.cache.get(pattern.pattern_type, key, namespace=None)
    item("CacheManager.get (L1 hit)")(cache_get)

    from tmws import engine as engine_module

    local = engine.cache.local.get(pattern.pattern_type, key)
    raw = local[-1] if local is not None else None
    if raw is not None:
        template = engine_module._decode(raw)

        async def decode_hit() -> None:
            engine_module._decode(raw)
        item("msgpack decode of the cached result (as now)")(decode_hit)

        async def copy_hit() -> None:
            msgspec.structs.replace(template, tokens_used=0, cache_hit=True,
                                    metadata={**template.metadata, "cache_tier": "local"})
        item("structs.replace of a kept decoded result (alternative)")(copy_hit)

    async def lookup() -> None:
        await engine._lookup(True, pattern, pattern.pattern_type, QUERY,
                             ExecutionMode.BALANCED, "default", {}, None)
    item("engine._lookup (handler + key + get + decode + mark)")(lookup)

    result_holder: list[Any] = []

    async def finish() -> None:
        if not result_holder:
            result_holder.append(await engine.execute(QUERY, "balanced", None, True))
        engine._finish(time.perf_counter(), pattern.pattern_type, result_holder[0], "default",
                       ExecutionMode.BALANCED)
    item("engine._finish (counters, metrics, audit record)")(finish)

    async def metrics() -> None:
        engine.metrics.record(pattern.pattern_type, pattern.name, True, 0.0002, 0)
    item("ExecutionMetrics.record (prometheus-client)")(metrics)

    async def audit() -> None:
        engine.audit.record("default", "execute", target=pattern.name, outcome="success",
                            tokens=0, duration_ms=0.2,
                            detail={"pattern_type": "infrastructure", "cache_hit": True,
                                    "mode": "balanced"})
    item("AuditLog.record")(audit)

    async def encode() -> None:
        if not result_holder:
            result_holder.append(await engine.execute(QUERY, "balanced", None, True))
        encoder.encode(result_holder[0])
    item("JSON encode of the ExecutionResult")(encode)
    return whole, items


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("TMWS_")]:
        del os.environ[name]
    with tempfile.TemporaryDirectory(prefix="tmws-hit-profile-") as tmp:
        os.environ["TMWS_DATA_DIR"] = f"{tmp}/data"
        os.environ["TMWS_LOG_LEVEL"] = "WARNING"
        await profile(args, Path(tmp))


async def profile(args: argparse.Namespace, tmp: Path) -> None:
    import msgspec

    from tmws.http.app import create_app

    outer: Any = create_app()
    queue, lifespan = await start(outer)
    inner = getattr(outer, "app", outer)
    engine = inner.engine
    await outer(scope(), receive, send)  # computes and caches
    _sent.clear()
    await outer(scope(), receive, send)
    answer = msgspec.json.decode(_sent[-1]["body"])
    if not answer.get("cache_hit"):
        raise SystemExit(f"not a cache hit: {answer}")
    result_file = tmp / "result.json"
    result_file.write_bytes(_sent[-1]["body"])
    os.environ["BARE_ASGI_RESULT"] = str(result_file)
    from bench import bare_asgi

    whole, items = _items(outer, engine)

    async def bare() -> None:
        await bare_asgi.app(scope(), receive, send)
    whole["bench.bare_asgi.app (same decode/encode, nothing else)"] = bare
    try:
        times, audit_cpu = await measure(whole, args.calls, args.rounds, engine)
        print(f"µs per request, thread CPU, median and min of {args.rounds} rounds of "
              f"{args.calls} calls")
        report("  median      min", times)
        if audit_cpu:
            print(f"  {statistics.median(audit_cpu):7.2f}  {min(audit_cpu):7.2f}   audit writer, "
                  "per record (CPU of flush(), process time)")
        times, _ = await measure(items, args.calls, args.rounds, engine)
        report("components (each alone)", times)
    finally:
        await queue.put({"type": "lifespan.shutdown"})
        await lifespan


if __name__ == "__main__":
    asyncio.run(main())
