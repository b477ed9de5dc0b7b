"""In-process cost of one L1-hit ``POST /api/v1/execute``, by component (no sockets, no Granian).

The served app (``tmws.http.app.create_app()``, lifespan included: a real engine on an
embedded PostgreSQL in a temporary directory or ``--database-url``, no Redis) is driven with
a fake ``receive``/``send``; then each step of the hit path is timed alone. Every figure is
thread CPU time (``time.thread_time_ns``, so time the scheduler gives to other processes
does not count) per call: ``--rounds`` rounds of ``--calls`` calls, rounds interleaved
across items, median and minimum of the rounds. The audit buffer is written out between
rounds (as its writer does every 0.5 s); that writer's CPU per record is reported too.

    .venv/bin/python bench/hit_profile.py [--calls 2000] [--rounds 15] [--smoke]

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

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._postgres import add_database_option, server_database_env  # noqa: E402
from bench._smoke import parse_args  # noqa: E402
from tmws.engine import PatternExecutionEngine  # noqa: E402
from tmws.http.app import TmwsApp  # noqa: E402
from tmws.http.asgi import Message, Receive, Scope, Send  # noqa: E402

QUERY = "run tool vector_search"
BODY = b'{"query": "run tool vector_search", "execution_mode": "balanced"}'
HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"),
           (b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


def scope() -> Scope:
    """What Granian passes (a fresh dict per request; headers a list of byte pairs)."""
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000), "scheme": "http", "method": "POST",
            "root_path": "", "path": "/api/v1/execute", "raw_path": b"/api/v1/execute",
            "query_string": b"", "headers": HEADERS, "extensions": {}, "state": {}}


async def receive() -> Message:
    return {"type": "http.request", "body": BODY, "more_body": False}


_sent: list[Message] = []


async def send(message: Message) -> None:
    _sent.append(message)


async def start(app: TmwsApp) -> tuple[asyncio.Queue[Message], asyncio.Task[None]]:
    queue: asyncio.Queue[Message] = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    out: list[Message] = []

    async def lifespan_send(message: Message) -> None:
        out.append(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                   queue.get, lifespan_send))
    while not out:
        await asyncio.sleep(0.05)
    if out[0]["type"] != "lifespan.startup.complete":
        raise SystemExit(f"start-up failed: {out[0]}")
    return queue, task


Item = Callable[[], Awaitable[Any]]


async def measure(items: dict[str, Item], calls: int, rounds: int,
                  engine: PatternExecutionEngine) -> tuple[dict[str, list[float]], list[float]]:
    times: dict[str, list[float]] = {name: [] for name in items}
    audit_cpu: list[float] = []
    for _ in range(rounds):
        for name in times:
            fn = items[name]
            gc.collect()
            began = time.thread_time_ns()
            for _ in range(calls):
                await fn()
            times[name].append((time.thread_time_ns() - began) / calls / 1000)
            _sent.clear()
            pending = int(engine.audit.stats().get("pending", 0))
            if pending:
                began = time.process_time_ns()
                await engine.audit.flush()
                audit_cpu.append((time.process_time_ns() - began) / pending / 1000)
    return times, audit_cpu


def report(title: str, times: dict[str, list[float]]) -> None:
    print(title)
    for name, values in times.items():
        print(f"  {statistics.median(values):7.2f}  {min(values):7.2f}   {name}")


async def _items(app: TmwsApp, engine: PatternExecutionEngine
                 ) -> tuple[dict[str, Item], dict[str, Item]]:
    """The whole request and its steps, each through tmws's public API only: a private
    helper renamed in a refactoring must not break the profile."""
    from tmws.http.asgi import Request
    from tmws.http.routes import DISPATCHER
    from tmws.http.schemas import ExecuteRequest
    from tmws.models import ExecutionMode, ExecutionResult

    async def full() -> None:
        await app(scope(), receive, send)

    async def execute() -> None:
        await engine.execute(QUERY, "balanced", None, True)

    whole: dict[str, Item] = {
        "whole request: TmwsApp (as served)": full,
        "engine.execute(...)": execute,
    }
    items: dict[str, Item] = {}

    def item(name: str) -> Callable[[Item], Item]:
        def register(fn: Item) -> Item:
            items[name] = fn
            return fn
        return register

    async def trivial(scope_: Scope, receive_: Receive, send_: Send) -> None:
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        await send_({"type": "http.response.body", "body": b"{}"})

    item("a two-message ASGI app (reference)")(lambda: trivial(scope(), receive, send))
    sc = scope()

    async def resolve() -> None:
        DISPATCHER.resolve("POST", "/api/v1/execute")
    item("DISPATCHER.resolve")(resolve)

    async def body() -> None:
        await Request(sc, receive, 65536, {}).json_body()
    item("Request(...).json_body()")(body)

    decoder = msgspec.json.Decoder(ExecuteRequest)

    async def decode_body() -> None:
        decoder.decode(BODY)
    item("msgspec decode of the body (ExecuteRequest)")(decode_body)

    async def match() -> None:
        engine.router.match(QUERY, ExecutionMode.BALANCED)
    item("router.match (Rust matcher; releases the GIL)")(match)

    pattern = engine.router.match(QUERY, ExecutionMode.BALANCED)
    if pattern is None:
        raise SystemExit(f"no pattern matches {QUERY!r}")
    result = await engine.execute(QUERY, "balanced", None, True)
    if not result.cache_hit:
        raise SystemExit(f"not a cache hit: {result}")
    # A cached result as the result cache keeps it: msgpack bytes, under a key of our own.
    raw = msgspec.msgpack.encode(result)
    await engine.cache.put(pattern.pattern_type, "hit-profile", raw, ttl=3600)

    async def cache_get() -> None:
        await engine.cache.get(pattern.pattern_type, "hit-profile", namespace=None)
    item("CacheManager.get (L1 hit)")(cache_get)

    result_decoder = msgspec.msgpack.Decoder(ExecutionResult)

    async def decode_hit() -> None:
        result_decoder.decode(raw)
    item("msgpack decode of a cached ExecutionResult")(decode_hit)

    async def copy_hit() -> None:
        msgspec.structs.replace(result, tokens_used=0, cache_hit=True,
                                metadata={**result.metadata, "cache_tier": "local"})
    item("structs.replace of a kept decoded result (alternative)")(copy_hit)

    async def metrics() -> None:
        engine.metrics.record(pattern.pattern_type, pattern.name, True, 0.0002, 0)
    item("ExecutionMetrics.record (prometheus-client)")(metrics)

    async def audit() -> None:
        engine.audit.record("default", "execute", target=pattern.name, outcome="success",
                            tokens=0, duration_ms=0.2,
                            detail={"pattern_type": "infrastructure", "cache_hit": True,
                                    "mode": "balanced"})
    item("AuditLog.record")(audit)

    encoder = msgspec.json.Encoder()

    async def encode() -> None:
        encoder.encode(result)
    item("JSON encode of the ExecutionResult")(encode)
    return whole, items


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    add_database_option(parser)
    args = parse_args(parser, calls=20, rounds=2)
    for name in [k for k in os.environ if k.startswith("TMWS_")]:
        del os.environ[name]
    with tempfile.TemporaryDirectory(prefix="tmws-hit-profile-") as tmp:
        os.environ.update(server_database_env(args.database_url, f"{tmp}/data"))
        os.environ["TMWS_LOG_LEVEL"] = "WARNING"
        await profile(args, Path(tmp))


async def profile(args: argparse.Namespace, tmp: Path) -> None:
    from tmws.http.app import create_app

    app = create_app()
    assert isinstance(app, TmwsApp), app
    queue, lifespan = await start(app)
    engine = app.engine
    assert engine is not None
    await app(scope(), receive, send)  # computes and caches
    _sent.clear()
    await app(scope(), receive, send)
    answer = msgspec.json.decode(_sent[-1]["body"])
    if not answer.get("cache_hit"):
        raise SystemExit(f"not a cache hit: {answer}")
    result_file = tmp / "result.json"
    result_file.write_bytes(_sent[-1]["body"])
    os.environ["BARE_ASGI_RESULT"] = str(result_file)
    from bench import bare_asgi

    whole, items = await _items(app, engine)

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
