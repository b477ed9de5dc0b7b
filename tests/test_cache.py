from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis

from tests.conftest import PrivateRedis
from tests.fix_clock import Clock
from tests.fix_redis import raw_redis
from tmws.cache import (
    CacheManager,
    CircuitBreaker,
    LocalCache,
    TieredLocalCache,
    result_key,
)
from tmws.errors import RedisUnavailable

pytestmark = pytest.mark.redis_topologies


def test_entries_expire_absolutely(clock: Clock) -> None:
    cache: LocalCache[str] = LocalCache(10, clock=clock)
    cache.put("k", "v", ttl=10)
    clock.now += 9
    assert cache.get("k") == "v"  # a hit does not extend the life
    clock.now += 1
    assert cache.get("k") is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_least_recently_used_is_evicted() -> None:
    cache: LocalCache[int] = LocalCache(2)
    cache.put("a", 1, 60)
    cache.put("b", 2, 60)
    assert cache.get("a") == 1
    cache.put("c", 3, 60)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    assert cache.evictions == 1 and len(cache) == 2


def test_zero_ttl_or_size_never_stores() -> None:
    cache: LocalCache[int] = LocalCache(2)
    cache.put("a", 1, 0)
    assert cache.get("a") is None
    empty: LocalCache[int] = LocalCache(0)
    empty.put("a", 1, 60)
    assert len(empty) == 0


def test_tiers_are_separate_and_report_rates() -> None:
    tiers: TieredLocalCache[int] = TieredLocalCache({"memory": 1, "hybrid": 1})
    tiers.put("memory", "k", 1, 60)
    assert tiers.get("hybrid", "k") is None
    assert tiers.get("memory", "k") == 1
    stats = tiers.stats()
    assert stats["hits"] == 1 and stats["misses"] == 1 and stats["hit_rate"] == 50.0


def test_circuit_breaker_opens_and_half_opens(clock: Clock) -> None:
    breaker = CircuitBreaker(failures=2, reset_after=10, clock=clock)
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow() and breaker.trips == 1
    clock.now += 10
    assert breaker.state == "half_open" and breaker.allow()
    breaker.failure()  # the trial failed: open again, for another full period
    assert breaker.state == "open"
    clock.now += 10
    breaker.success()
    assert breaker.state == "closed" and breaker.trips == 1


async def test_redis_tier_round_trip_and_absolute_expiry(redis_url: str) -> None:
    first = CacheManager(redis_url=redis_url, local_ttl=60)
    second = CacheManager(redis_url=redis_url, local_ttl=60)
    try:
        key = uuid.uuid4().hex
        assert await first.put("memory", key, b"value", ttl=1)
        assert (await first.get("memory", key))[:2] == (b"value", "local")
        assert (await second.get("memory", key))[:2] == (b"value", "redis")
        assert (await second.get("memory", key))[:2] == (b"value", "local")
        await asyncio.sleep(1.1)
        assert (await second.get("memory", key)).value is None  # L1 never outlives the entry
        assert second.stats()["redis"]["hits"] == 1
    finally:
        await first.close()
        await second.close()


async def test_generations_are_shared_through_redis(redis_url: str) -> None:
    first = CacheManager(redis_url=redis_url)
    second = CacheManager(redis_url=redis_url)
    namespace = uuid.uuid4().hex
    try:
        before = await second.generation(namespace)
        await first.bump(namespace, shared=False)
        after = await second.generation(namespace)
        assert before is not None and after is not None
        assert after[0] == before[0] + 1 and after[1] == before[1]
        await first.bump(namespace, shared=True)
        other = await second.generation(namespace + "-other")
        assert other is not None and other[1] == after[1] + 1
    finally:
        await first.close()
        await second.close()


async def test_oversized_values_are_counted_not_cached() -> None:
    cache = CacheManager(max_value_bytes=4)
    assert not await cache.put("hybrid", "k", b"too large", ttl=60)
    assert (await cache.get("hybrid", "k")).value is None
    assert cache.stats()["oversize_skipped"] == 1


async def test_redis_outage_degrades_and_recovers(private_redis: PrivateRedis) -> None:
    cache = CacheManager(redis_url=private_redis.url, redis_timeout=0.2, breaker_failures=2,
                         breaker_reset=0.5)
    try:
        assert (await cache.ping()).state == "ok"
        assert await cache.put("infrastructure", "k", b"v", ttl=60)
        private_redis.stop()
        assert (await cache.get("infrastructure", "k"))[:2] == (b"v", "local")  # L1 still serves
        assert (await cache.get("infrastructure", "other")).value is None
        assert await cache.generation("ns") is None  # unknowable: callers must not cache
        assert not (await cache.get("memory", "k2", namespace="ns")).cacheable
        assert (await cache.get("infrastructure", "another")).value is None
        assert cache.circuit == "open"
        started = time.monotonic()
        assert (await cache.get("infrastructure", "more")).value is None
        assert time.monotonic() - started < 0.05  # open circuit: Redis is not even asked
        assert (await cache.ping()).state == "unavailable"
        private_redis.start()
        await asyncio.sleep(0.6)
        assert (await cache.ping()).state == "ok"
        assert cache.circuit == "closed"
        assert await cache.generation("ns") is not None
        assert cache.stats()["redis"]["errors"] >= 2
    finally:
        await cache.close()


async def test_slow_redis_times_out_instead_of_stalling(private_redis: PrivateRedis) -> None:
    cache = CacheManager(redis_url=private_redis.url, redis_timeout=0.2, breaker_failures=5)
    try:
        assert (await cache.ping()).state == "ok"
        stall = asyncio.create_task(asyncio.to_thread(
            redis.Redis(port=private_redis.port).execute_command, "DEBUG", "SLEEP", "1"))
        await asyncio.sleep(0.1)  # the server is now asleep for a second
        started = time.monotonic()
        assert (await cache.get("memory", "key")).value is None
        assert time.monotonic() - started < 0.5
        assert cache.stats()["redis"]["errors"] == 1
        await stall
    finally:
        await cache.close()


async def test_memory_entries_carry_their_generation(redis_url: str) -> None:
    first = CacheManager(redis_url=redis_url)
    second = CacheManager(redis_url=redis_url)
    namespace, key = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        miss = await first.get("memory", key, namespace=namespace)
        assert miss.value is None and miss.generation is not None
        await first.put("memory", key, b"answer", ttl=60, generation=miss.generation,
                        namespace=namespace)
        assert (await second.get("memory", key, namespace=namespace))[:2] == (b"answer",
                                                                            "redis")
        await second.bump(namespace, shared=False)  # a write on the other instance
        for cache in (first, second):  # neither tier may answer from before the write
            stale = await cache.get("memory", key, namespace=namespace)
            assert stale.value is None and stale.generation != miss.generation
    finally:
        await first.close()
        await second.close()


async def test_clear_drops_every_result_and_keeps_generations(
        private_redis: PrivateRedis) -> None:
    first = CacheManager(redis_url=private_redis.url)
    second = CacheManager(redis_url=private_redis.url)  # another instance, same Redis
    raw = redis.Redis.from_url(private_redis.url)
    try:
        for i in range(2500):  # more than one SCAN/UNLINK batch
            assert await first.put("infrastructure", f"k{i}", b"v", ttl=60)
        generation = await first.get("memory", "m", namespace="ns")
        await first.put("memory", "m", b"mine", ttl=60, generation=generation.generation,
                        namespace="ns")
        await first.bump("other", shared=False)
        raw.set("unrelated", "stays")
        assert (await second.get("infrastructure", "k7")).tier == "redis"
        assert await second.clear() == 2501
        assert (await first.get("infrastructure", "k2499")).tier == "local"  # L1: ages out
        assert (await second.get("infrastructure", "k1")).value is None
        assert (await second.get("memory", "m", namespace="ns")).value is None
        assert raw.get("unrelated") == b"stays"
        kept = await second.generation("other")  # generations only grow
        assert kept is not None and generation.generation is not None
        assert kept == (1, *generation.generation[1:])
        assert await first.clear() == 0
        assert (await first.get("infrastructure", "k1")).value is None
    finally:
        raw.close()
        await first.close()
        await second.close()


async def test_clear_without_redis_or_with_redis_down(private_redis: PrivateRedis) -> None:
    local_only = CacheManager()
    await local_only.put("infrastructure", "k", b"v", ttl=60)
    assert await local_only.clear() == 0
    assert (await local_only.get("infrastructure", "k")).value is None
    down = CacheManager(redis_url=private_redis.url, redis_timeout=0.2)
    try:
        await down.put("infrastructure", "k", b"v", ttl=60)
        private_redis.stop()
        with pytest.raises(RedisUnavailable):
            await down.clear()
        assert (await down.get("infrastructure", "k")).value is None  # L1 cleared anyway
    finally:
        await down.close()


async def test_redis_losing_its_data_never_revives_a_pre_write_result(
        private_redis: PrivateRedis) -> None:
    """Redis restarted empty counts generations again: without a random start, a namespace
    written since would be back at the generation an L1 entry was computed at, and that
    stale entry would be served for up to TMWS_CACHE_LOCAL_TTL."""
    cache = CacheManager(redis_url=private_redis.url, breaker_reset=0.2)
    try:
        before = await cache.get("memory", "recall-k", namespace="ns")
        assert before.value is None and before.generation is not None
        assert before.generation[1] > 0  # the shared counter starts at a random value
        assert await cache.put("memory", "recall-k", b"before the write", ttl=60,
                               generation=before.generation, namespace="ns")
        assert (await cache.get("memory", "recall-k", namespace="ns")).tier == "local"
        await cache.bump("ns", shared=False)  # a write: the entry is stale now
        assert (await cache.get("memory", "recall-k", namespace="ns")).value is None

        private_redis.stop()  # no persistence: it comes back empty
        private_redis.start()
        after = None
        for _ in range(50):  # the client reconnects on its own
            after = await cache.get("memory", "recall-k", namespace="ns")
            if after.cacheable:
                break
            await asyncio.sleep(0.1)
        assert after is not None and after.cacheable
        assert after.value is None, "a result from before the write was served"
        assert after.generation != before.generation
    finally:
        await cache.close()


def test_tuning_scales_what_the_pattern_file_declares() -> None:
    # The defaults (300 s, 1000 entries) leave the file's figures as they are.
    plain = CacheManager(type_sizes={"infrastructure": 500, "memory": 1000, "hybrid": 200})
    assert plain.lifetime(60) == 60 and plain.lifetime(None) == 300
    assert plain.local.stats()["size"] == {"infrastructure": 0, "memory": 0, "hybrid": 0}
    assert [plain.local._caches[k].max_size for k in ("infrastructure", "memory", "hybrid")] == [
        500, 1000, 200]
    # "Aggressive caching" (deploy/README.md, Performance Tuning): every declared TTL and size
    # doubles, 0 stays 0.
    tuned = CacheManager(local_ttl=120, redis_ttl=600, max_local_size=2000,
                         type_sizes={"infrastructure": 500, "memory": 1000, "hybrid": 200})
    assert (tuned.lifetime(60), tuned.lifetime(300), tuned.lifetime(None), tuned.lifetime(0)) == (
        120, 600, 600, 0)
    assert [tuned.local._caches[k].max_size for k in ("infrastructure", "memory", "hybrid")] == [
        1000, 2000, 400]
    assert tuned.stats()["tuning"] == {"redis_ttl": 600.0, "ttl_scale": 2.0, "local_ttl": 120,
                                       "max_local_size": 2000, "size_scale": 2.0}
    # Without type sizes every type gets max_local_size, until an engine gives the file's.
    guide = CacheManager(max_local_size=2000)
    assert guide.local._caches["memory"].max_size == 2000 and not guide.type_sizes_given
    guide.size_types({"infrastructure": 500, "memory": 1000, "hybrid": 200})
    assert guide.local._caches["hybrid"].max_size == 400
    tuned.size_types({"hybrid": 1})  # sizes chosen by the caller stay
    assert tuned.local._caches["hybrid"].max_size == 400
    assert CacheManager(max_local_size=0).local._caches["memory"].max_size == 0
    with pytest.raises(ValueError, match="redis_ttl must be 0 or more"):
        CacheManager(redis_ttl=-1)


async def test_redis_keeps_a_result_for_its_scaled_life(redis_url: str) -> None:
    cache = CacheManager(redis_url=redis_url, local_ttl=120, redis_ttl=600, max_local_size=2000)
    await cache.initialize()  # the original service's call: nothing to do
    key = f"scaled-{uuid.uuid4().hex}"
    assert await cache.put("infrastructure", key, b"v", cache.lifetime(60))
    client = raw_redis(redis_url)
    try:
        pttl = client.pttl(result_key(key))
    finally:
        client.close()
    assert 60_000 < pttl <= 120_000  # 60 s declared, x 600/300: no longer capped
    other = CacheManager(redis_url=redis_url)
    found = await other.get("infrastructure", key)
    assert (found.value, found.tier, found.redis_lookup) == (b"v", "redis", True)
    local = await cache.get("infrastructure", key)
    assert (local.tier, local.redis_lookup) == ("local", False)
    await other.close()
    await cache.close()
