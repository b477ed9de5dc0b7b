from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis

from tests.conftest import PrivateRedis
from tests.fix_clock import Clock
from tests.fix_redis import raw_redis
from tmws.cache import CacheManager
from tmws.config import Settings
from tmws.ratelimit import KEY_PREFIX, RateDecision, RateLimiter

pytestmark = pytest.mark.redis_topologies


def unique_key() -> str:
    return f"client-{uuid.uuid4().hex}"


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    """Retry ``check`` until it holds; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return False


async def spend(limiter: RateLimiter, key: str, count: int) -> list[RateDecision]:
    return [await limiter.hit(key) for _ in range(count)]


# -- in-process (no Redis) ----------------------------------------------------------------


async def test_local_burst_then_one_per_interval(clock: Clock) -> None:
    limiter = RateLimiter(3, 3, clock=clock)  # one request per second, burst of 3
    decisions = await spend(limiter, "k", 4)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert {d.backend for d in decisions} == {"local"}
    assert [d.retry_after for d in decisions[:3]] == [0.0, 0.0, 0.0]
    assert [d.reset_after for d in decisions[:3]] == [1.0, 2.0, 3.0]
    denied = decisions[3]
    assert denied.limit == 3 and denied.retry_after == 1.0 and denied.reset_after == 3.0
    clock.now += 0.5
    refused = await limiter.hit("k")  # a refused request spends nothing
    assert not refused.allowed and refused.retry_after == 0.5
    clock.now += 0.5
    again = await limiter.hit("k")
    assert again.allowed and again.remaining == 0
    clock.now += 100  # long idle: the full burst is back, not more
    assert [d.remaining for d in await spend(limiter, "k", 3)] == [2, 1, 0]
    assert limiter.stats() == {"allowed": 7, "limited": 2, "redis_errors": 0,
                               "local_fallbacks": 0, "outages": 0, "backend": "local",
                               "keys_tracked": 1}


async def test_local_keys_are_independent_and_exact_under_concurrency() -> None:
    limiter = RateLimiter(20, 60)
    first, second = unique_key(), unique_key()
    results = await asyncio.gather(*(limiter.hit(first) for _ in range(50)))
    assert sum(d.allowed for d in results) == 20
    assert sorted(d.remaining for d in results if d.allowed) == list(range(20))
    other = await limiter.hit(second)
    assert other.allowed and other.remaining == 19


async def test_uneven_period_still_allows_exactly_the_burst(clock: Clock) -> None:
    limiter = RateLimiter(7, 1, clock=clock)  # 1/7 s does not divide into microseconds
    decisions = await spend(limiter, "k", 8)
    assert [d.allowed for d in decisions] == [True] * 7 + [False]
    assert decisions[6].remaining == 0


async def test_idle_keys_are_swept_from_memory(clock: Clock) -> None:
    limiter = RateLimiter(1, 1, clock=clock)
    for n in range(3000):
        await limiter.hit(f"k{n}")
    clock.now += 2  # every key is idle again
    for n in range(3000):
        await limiter.hit(f"fresh{n}")
    assert limiter.stats()["keys_tracked"] == 3000  # the idle ones are gone


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 60)
    with pytest.raises(ValueError):
        RateLimiter(10, 0)
    with pytest.raises(ValueError):
        RateLimiter(10, 60, redis_url="redis://127.0.0.1:6379/15", cache=CacheManager())


# -- headers --------------------------------------------------------------------------------


def test_headers_for_an_allowed_request() -> None:
    decision = RateDecision(True, 100, 57, 25.2, 0.0, "redis")
    assert RateLimiter.headers(decision) == [
        (b"ratelimit-limit", b"100"), (b"ratelimit-remaining", b"57"),
        (b"ratelimit-reset", b"26"), (b"x-ratelimit-limit", b"100"),
        (b"x-ratelimit-remaining", b"57"), (b"x-ratelimit-reset", b"26")]


def test_headers_for_a_refused_request() -> None:
    headers = dict(RateLimiter.headers(RateDecision(False, 10, 0, 59.4, 5.01, "local")))
    assert headers[b"ratelimit-remaining"] == b"0" and headers[b"x-ratelimit-reset"] == b"60"
    assert headers[b"retry-after"] == b"6"
    tiny = dict(RateLimiter.headers(RateDecision(False, 10, 0, 0.2, 0.001, "local")))
    assert tiny[b"retry-after"] == b"1" and tiny[b"ratelimit-reset"] == b"1"


async def test_headers_from_real_decisions(clock: Clock) -> None:
    limiter = RateLimiter(2, 10, clock=clock)
    allowed, _, refused = await spend(limiter, "k", 3)
    assert dict(limiter.headers(allowed)) == {
        b"ratelimit-limit": b"2", b"ratelimit-remaining": b"1", b"ratelimit-reset": b"5",
        b"x-ratelimit-limit": b"2", b"x-ratelimit-remaining": b"1", b"x-ratelimit-reset": b"5"}
    assert dict(limiter.headers(refused))[b"retry-after"] == b"5"
    assert b"retry-after" not in dict(limiter.headers(allowed))


# -- Redis ----------------------------------------------------------------------------------


async def test_redis_allows_exactly_the_limit(redis_url: str) -> None:
    limiter = RateLimiter(5, 60, redis_url=redis_url)
    key = unique_key()
    try:
        decisions = await spend(limiter, key, 7)
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
        assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
        assert {d.backend for d in decisions} == {"redis"}
        assert all(d.retry_after == 0 for d in decisions[:5])
        for refused in decisions[5:]:
            assert 11 < refused.retry_after <= 12  # one emission interval minus elapsed
            assert 59 < refused.reset_after <= 60
        stats = limiter.stats()
        assert (stats["allowed"], stats["limited"], stats["backend"]) == (5, 2, "redis")
    finally:
        await limiter.close()


async def test_redis_keys_are_hashed_independent_and_expire(redis_url: str) -> None:
    limiter = RateLimiter(2, 30, redis_url=redis_url)
    odd = f"::ffff:10.0.0.1 {uuid.uuid4().hex} *?[]\n\x00ü\udcff"  # anything a key may hold
    plain = unique_key()
    client = raw_redis(redis_url)
    try:
        before = set(client.scan_iter(match=KEY_PREFIX + "*"))
        assert [d.allowed for d in await spend(limiter, odd, 3)] == [True, True, False]
        assert [d.remaining for d in await spend(limiter, plain, 2)] == [1, 0]
        keys = [k.decode() for k in set(client.scan_iter(match=KEY_PREFIX + "*")) - before]
        assert len(keys) == 2 and all(len(k) == len(KEY_PREFIX) + 32 for k in keys)
        assert all(0 < client.pttl(k) <= 30_000 for k in keys)  # idle keys vanish
    finally:
        client.close()
        await limiter.close()


async def test_two_instances_share_one_limit(redis_url: str) -> None:
    first = RateLimiter(6, 60, redis_url=redis_url)
    # A second instance whose own clock is an hour off: Redis' clock decides.
    second = RateLimiter(6, 60, redis_url=redis_url, clock=lambda: time.monotonic() + 3600)
    key = unique_key()
    try:
        decisions = [await (first if n % 2 else second).hit(key) for n in range(8)]
        assert [d.allowed for d in decisions] == [True] * 6 + [False] * 2
        assert [d.remaining for d in decisions[:6]] == [5, 4, 3, 2, 1, 0]
        results = await asyncio.gather(*(limiter.hit(k) for limiter in (first, second)
                                         for k in [unique_key()] for _ in range(5)))
        assert all(d.allowed for d in results)  # other keys are untouched
    finally:
        await first.close()
        await second.close()


async def test_concurrent_hits_allow_exactly_the_limit(redis_url: str) -> None:
    first = RateLimiter(20, 60, redis_url=redis_url)
    second = RateLimiter(20, 60, redis_url=redis_url)
    one, shared = unique_key(), unique_key()
    try:
        results = await asyncio.gather(*(first.hit(one) for _ in range(50)))
        assert sum(d.allowed for d in results) == 20
        assert sorted(d.remaining for d in results if d.allowed) == list(range(20))
        assert all(d.retry_after > 0 for d in results if not d.allowed)
        across = await asyncio.gather(*(limiter.hit(shared) for _ in range(25)
                                        for limiter in (first, second)))
        assert sum(d.allowed for d in across) == 20
    finally:
        await first.close()
        await second.close()


async def test_budget_recovers_after_the_window(redis_url: str) -> None:
    limiter = RateLimiter(2, 1, redis_url=redis_url)  # one request per half second
    key = unique_key()
    try:
        allowed = [d.allowed for d in await spend(limiter, key, 2)]
        refused = await limiter.hit(key)
        assert allowed == [True, True] and not refused.allowed
        assert 0 < refused.retry_after <= 0.5 and refused.reset_after <= 1.0

        async def allowed_again() -> bool:
            return (await limiter.hit(key)).allowed

        assert await poll(allowed_again)
        await asyncio.sleep(1.0)  # at least a whole period idle: the full burst is back

        async def full_burst() -> bool:
            return (await limiter.hit(key)).remaining == 1

        assert await poll(full_burst)
        assert limiter.stats()["redis_errors"] == 0
    finally:
        await limiter.close()


async def test_a_shared_cache_lends_its_client(redis_url: str) -> None:
    cache = CacheManager(redis_url=redis_url)
    settings = Settings.from_env({"TMWS_RATE_LIMIT_REQUESTS": "3",
                                  "TMWS_RATE_LIMIT_PERIOD": "10"})
    limiter = RateLimiter.from_settings(settings, cache=cache)
    try:
        decisions = await spend(limiter, unique_key(), 4)
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert {d.backend for d in decisions} == {"redis"}
        await limiter.close()  # the cache is the caller's: still usable
        assert (await cache.ping()).state == "ok"
    finally:
        await cache.close()


async def test_from_settings_without_redis_is_local() -> None:
    limiter = RateLimiter.from_settings(Settings.from_env({}))
    assert (limiter.requests, limiter.period) == (100, 60)
    assert (await limiter.hit("k")).backend == "local"
    assert limiter.stats()["backend"] == "local"
    await limiter.close()


async def test_script_is_reloaded_after_script_flush(private_redis: PrivateRedis) -> None:
    limiter = RateLimiter(3, 60, redis_url=private_redis.url)
    client = redis.Redis(port=private_redis.port)
    try:
        assert (await limiter.hit("a")).remaining == 2
        client.script_flush()
        again = await limiter.hit("a")
        assert again.backend == "redis" and again.remaining == 1
        assert limiter.stats()["redis_errors"] == 0
    finally:
        client.close()
        await limiter.close()


async def test_redis_outage_falls_back_and_recovers(private_redis: PrivateRedis,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    cache = CacheManager(redis_url=private_redis.url, redis_timeout=0.3, breaker_failures=2,
                         breaker_reset=0.5)
    limiter = RateLimiter(5, 60, cache=cache)
    caplog.set_level(logging.INFO, logger="tmws.ratelimit")
    try:
        before = await spend(limiter, "k", 2)
        assert [(d.backend, d.remaining) for d in before] == [("redis", 4), ("redis", 3)]
        private_redis.stop()
        started = time.monotonic()
        during = await spend(limiter, "k", 5)
        # Answered locally, within the timeout, continuing from what Redis had counted.
        assert time.monotonic() - started < 0.3 * 5
        assert {d.backend for d in during} == {"local"}
        assert [d.allowed for d in during] == [True, True, True, False, False]
        assert [d.remaining for d in during[:3]] == [2, 1, 0]
        assert (await limiter.hit("other")).allowed
        stats = limiter.stats()
        assert stats["backend"] == "local" and stats["outages"] == 1
        assert stats["local_fallbacks"] == 6 and stats["redis_errors"] >= 1
        assert stats["redis_errors"] <= 2  # then the breaker stops asking
        warnings = [r for r in caplog.records
                    if r.name == "tmws.ratelimit" and r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "Redis unavailable" in warnings[0].getMessage()

        private_redis.start()

        async def back_on_redis() -> bool:
            return (await limiter.hit(unique_key())).backend == "redis"

        assert await poll(back_on_redis)
        # The restarted server lost its state: the key starts over, shared again.
        assert [(d.backend, d.remaining) for d in await spend(limiter, "k", 2)] == [
            ("redis", 4), ("redis", 3)]
        assert limiter.stats()["backend"] == "redis"
        assert any("Redis is back" in r.getMessage() for r in caplog.records)
    finally:
        await limiter.close()
        await cache.close()


async def test_stalled_redis_is_not_waited_for(private_redis: PrivateRedis) -> None:
    limiter = RateLimiter(3, 60, redis_url=private_redis.url, timeout=0.2)
    try:
        assert (await limiter.hit("k")).backend == "redis"
        stall = asyncio.create_task(asyncio.to_thread(
            redis.Redis(port=private_redis.port).execute_command, "DEBUG", "SLEEP", "1"))
        await asyncio.sleep(0.1)  # the server is now asleep for a second
        started = time.monotonic()
        decision = await limiter.hit("k")
        assert time.monotonic() - started < 0.8  # the timeout, not the stall
        assert decision.backend == "local" and decision.allowed and decision.remaining == 1
        assert limiter.stats()["redis_errors"] == 1
        await stall

        async def back_on_redis() -> bool:
            return (await limiter.hit(unique_key())).backend == "redis"

        assert await poll(back_on_redis)  # one failure does not open the circuit
    finally:
        await limiter.close()
