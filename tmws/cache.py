"""The result cache: an in-process LRU per pattern type (L1) in front of Redis (L2).

Keys are built by the engine and carry everything that changes an answer (namespace,
normalised query, mode, relevant context, the pattern set's fingerprint and, for results
read from memory, the memory generations), so entries never need invalidating: a change
simply makes new keys. Expiry is absolute: a hit never extends an entry's life.

Tuning (``TMWS_CACHE_TTL``, ``TMWS_CACHE_MAX_SIZE`` and
``CacheManager(local_ttl=, redis_ttl=, max_local_size=)``; deploy/README.md, Performance
Tuning) *scales* what the pattern file declares instead of capping it: every pattern of the
shipped library sets ``cache_ttl``, so a default that only applied where a pattern says
nothing, or a cap, would make "increase cache TTL / size" do nothing. Scaling keeps the
file's relative freshness (a 60 s health check stays 5x fresher than a 300 s recall) and
makes ``TMWS_CACHE_TTL=300`` / ``TMWS_CACHE_MAX_SIZE=1000`` (the defaults) change nothing:

- a result lives ``declared x redis_ttl / 300`` seconds, ``declared`` being the pattern's
  ``cache_ttl``, else its type's ``cache_config`` ttl, else 300 (0 never caches);
- L1 holds ``declared max_size x max_local_size / 1000`` entries per pattern type
  (``max_size`` from ``cache_config``, else 1000);
- L1 trusts an entry for at most ``local_ttl`` seconds of that life.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Final, Generic, NamedTuple, TypeVar

from tmws.errors import RedisUnavailable
from tmws.health import RedisStatus

__all__ = ["BASE_LOCAL_SIZE", "BASE_TTL", "CacheManager", "CircuitBreaker", "Generation",
           "LocalCache", "Lookup", "TieredLocalCache"]

# The reference points of the scaling above: the defaults (TMWS_CACHE_TTL=300,
# TMWS_CACHE_MAX_SIZE=1000), at which the pattern file's figures apply unchanged.
BASE_TTL: Final = 300
BASE_LOCAL_SIZE: Final = 1000

V = TypeVar("V")
# (namespace generation, shared generation): changes on every write a namespace can read.
Generation = tuple[int, int]


class LocalCache(Generic[V]):
    """A bounded LRU with absolute expiry (a hit does not extend an entry's life)."""

    def __init__(self, max_size: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable, accept: Callable[[V], bool] | None = None) -> V | None:
        """The live value, if any (and if ``accept`` approves it; a rejected entry is
        dropped and counted as a miss)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires, value = entry
        if expires <= self._clock() or (accept is not None and not accept(value)):
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: V, ttl: float) -> None:
        if ttl <= 0 or self.max_size <= 0:
            return
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class TieredLocalCache(Generic[V]):
    """One LocalCache per pattern type, sized from the pattern file's ``cache_config``."""

    def __init__(self, sizes: Mapping[str, int], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._caches: dict[str, LocalCache[V]] = {
            kind: LocalCache(size, clock=clock) for kind, size in sizes.items()}

    def get(self, kind: str, key: Hashable,
            accept: Callable[[V], bool] | None = None) -> V | None:
        return self._caches[kind].get(key, accept)

    def put(self, kind: str, key: Hashable, value: V, ttl: float) -> None:
        self._caches[kind].put(key, value, ttl)

    def clear(self) -> None:
        for cache in self._caches.values():
            cache.clear()

    def stats(self) -> dict[str, Any]:
        hits = sum(c.hits for c in self._caches.values())
        misses = sum(c.misses for c in self._caches.values())
        return {
            "hits": hits,
            "misses": misses,
            "hit_rate": 100.0 * hits / (hits + misses) if hits + misses else 0.0,
            "evictions": sum(c.evictions for c in self._caches.values()),
            "size": {kind: len(c) for kind, c in self._caches.items()},
        }


class CircuitBreaker:
    """Stops calling a failing dependency for a while, then lets one trial call through.

    closed --(``failures`` in a row)--> open --(``reset_after`` s)--> half-open --ok--> closed
    """

    def __init__(self, failures: int, reset_after: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._reset_after = reset_after
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self.trips = 0

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._reset_after else "open"

    def allow(self) -> bool:
        return self.state != "open"

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def failure(self) -> None:
        self._failures += 1
        if self.state == "half_open" or self._failures >= self._threshold:
            if self._opened_at is None:
                self.trips += 1
            self._opened_at = self._clock()


# Namespaces are arbitrary strings, so the shared counter lives outside their key prefix.
_GEN_PREFIX = "tmws:gen:"
_SHARED_KEY = "tmws:gen-shared"
# The shared counter starts at a random value, not 0: Redis restarted without its data
# (or flushed) would otherwise count every namespace from 0 again, and an L1 entry from
# before the loss would match a generation that has since seen writes. A fresh random
# start makes every earlier generation pair unreachable instead.
_SEED_BITS = 40
_RESULT_PREFIX = "tmws:r:"
_CLEAR_BUDGET = 300.0  # seconds for clear() to sweep every result key


class CacheManager:
    """Results in two tiers: a bounded in-process LRU (L1) in front of Redis (L2).

    Every Redis call has a timeout and goes through a circuit breaker; when Redis fails,
    results are served from L1 or executed — never failed because of the cache. Memory
    generations (bumped by every write) live in Redis so that a write on one instance is
    seen by all; while Redis is unreachable, results that depend on memory are neither read
    from nor written to any cache, since another instance's writes cannot be seen.
    """

    def __init__(self, redis_url: str | None = None, *, local_ttl: float = 60.0,
                 redis_ttl: float | None = None, max_local_size: int = BASE_LOCAL_SIZE,
                 type_sizes: Mapping[str, int] | None = None, redis_timeout: float = 5.0,
                 redis_max_connections: int = 50, max_value_bytes: int = 1 << 20,
                 breaker_failures: int = 5, breaker_reset: float = 5.0) -> None:
        """``redis_ttl``: the life of a result whose pattern declares no TTL (default 300 s;
        declared TTLs are scaled by ``redis_ttl / 300``). ``max_local_size``: L1 entries per
        pattern type for a type without a size of its own (``type_sizes``, the pattern file's
        ``cache_config``; those are scaled by ``max_local_size / 1000``). ``local_ttl``: the
        longest L1 trusts an entry. See the module docstring for why scaling."""
        for name, value in (("local_ttl", local_ttl), ("max_local_size", max_local_size),
                            ("redis_ttl", 0 if redis_ttl is None else redis_ttl)):
            if value < 0:
                raise ValueError(f"{name} must be 0 or more (got {value!r})")
        self.local_ttl = local_ttl
        self.redis_ttl = float(BASE_TTL if redis_ttl is None else redis_ttl)
        self.max_local_size = max_local_size
        # Sizes the caller did not choose follow the pattern file's once an engine adopts
        # this cache (size_types).
        self.type_sizes_given = type_sizes is not None
        self.local: TieredLocalCache[tuple[float, Generation | None, bytes]] = TieredLocalCache(
            self._scaled_sizes(type_sizes))
        self.max_value_bytes = max_value_bytes
        self.breaker = CircuitBreaker(breaker_failures, breaker_reset)
        self._timeout = redis_timeout
        self._redis: Any = None
        if redis_url is not None:
            import redis.asyncio as aioredis

            # A blocking pool: at the connection limit a call waits (within the timeout) for
            # a free connection instead of failing, which would count as a Redis outage.
            pool = aioredis.BlockingConnectionPool.from_url(
                redis_url, max_connections=redis_max_connections, timeout=redis_timeout,
                socket_timeout=redis_timeout, socket_connect_timeout=redis_timeout,
                retry_on_timeout=False)
            self._redis = aioredis.Redis(connection_pool=pool)
        self._local_generations: dict[str, int] = {}
        self._local_shared = 0
        self.redis_hits = self.redis_misses = self.redis_errors = self.oversize = 0

    def _scaled_sizes(self, declared: Mapping[str, int] | None) -> dict[str, int]:
        base = dict(declared or dict.fromkeys(("infrastructure", "memory", "hybrid"),
                                              BASE_LOCAL_SIZE))
        return {kind: _scale(size, self.max_local_size, BASE_LOCAL_SIZE)
                for kind, size in base.items()}

    def size_types(self, declared: Mapping[str, int]) -> None:
        """Size L1 per pattern type from the pattern file's ``cache_config`` (scaled by
        ``max_local_size / 1000``), unless this cache was built with ``type_sizes``. For an
        engine adopting a cache built elsewhere, before its first lookup: entries go."""
        if not self.type_sizes_given:
            self.local = TieredLocalCache(self._scaled_sizes(declared))

    def lifetime(self, declared: float | None) -> float:
        """Seconds a result lives: the TTL its pattern declares (None: 300 s), scaled by
        ``redis_ttl / 300`` (TMWS_CACHE_TTL). 0 stays 0: never cached."""
        seconds = float(BASE_TTL if declared is None else declared)
        return seconds * self.redis_ttl / BASE_TTL

    async def initialize(self) -> None:
        """Nothing to do (the original service's CacheManager connected here; this one
        connects on first use): kept so that code written for it runs unchanged."""

    @property
    def redis_configured(self) -> bool:
        return self._redis is not None

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)

    async def _call(self, operation: Callable[[Any], Awaitable[Any]], *,
                    timeout: float | None = None) -> Any:
        """Run one Redis operation under the breaker and timeout (default: the Redis
        timeout); raises _Unavailable."""
        if self._redis is None or not self.breaker.allow():
            raise _Unavailable
        try:
            async with asyncio.timeout(timeout or self._timeout):
                result = await operation(self._redis)
        except Exception as exc:  # connection, timeout, protocol: all mean "Redis failed"
            self.redis_errors += 1
            self.breaker.failure()
            raise _Unavailable from exc
        self.breaker.success()
        return result

    async def run(self, operation: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``operation(redis_client)`` for another Redis user (e.g. the rate limiter),
        sharing this cache's client, timeout and circuit breaker.

        Raises :class:`RedisUnavailable` when Redis is not configured or the circuit is open
        (``__cause__`` is None), or when the call failed or timed out (``__cause__`` says
        why; the failure counts in ``redis_errors`` and towards the breaker).
        """
        return await self._call(operation)

    # -- generations --------------------------------------------------------------------

    async def generation(self, namespace: str) -> tuple[int, int] | None:
        """What this namespace can read has changed iff this changes; None when unknowable
        (Redis configured but unreachable): then memory results must not be cached."""
        if self._redis is None:
            return self._local_generation(namespace)
        try:
            own, shared = await self._call(
                lambda r: r.mget(_GEN_PREFIX + namespace, _SHARED_KEY))
            if shared is None:
                shared = await self._seed_shared()
        except _Unavailable:
            return None
        return int(own or 0), int(shared)

    async def _seed_shared(self) -> int:
        """The shared counter after a (re)start of Redis's data: a random start, set once
        whoever comes first (SET NX), read back."""
        start = secrets.randbits(_SEED_BITS) + 1

        async def seed(r: Any) -> Any:
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(_SHARED_KEY, start, nx=True)
                pipe.get(_SHARED_KEY)
                return (await pipe.execute())[1]

        return int(await self._call(seed))

    async def bump(self, namespace: str, *, shared: bool) -> None:
        """A memory write: every cached result that could include it becomes unreachable."""
        self._local_generations[namespace] = self._local_generations.get(namespace, 0) + 1
        if shared:
            self._local_shared += 1
        if self._redis is None:
            return

        async def incr(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                # Seeded before any increment, so a lost counter never restarts at 1.
                pipe.set(_SHARED_KEY, secrets.randbits(_SEED_BITS) + 1, nx=True)
                pipe.incr(_GEN_PREFIX + namespace)
                if shared:
                    pipe.incr(_SHARED_KEY)
                await pipe.execute()

        with contextlib.suppress(_Unavailable):
            await self._call(incr)

    # -- results ------------------------------------------------------------------------

    async def get(self, kind: str, key: str, *, namespace: str | None = None) -> Lookup:
        """Look ``key`` up in L1, then L2.

        With ``namespace``, the result depends on that namespace's memories: an entry counts
        only if it was computed at the current generations, and those are read in the same
        Redis round trip as the L2 value. The lookup also returns them, for the ``put`` of a
        miss — or says the result must not be cached when they cannot be known.
        """
        if namespace is None:
            generation: Generation | None = None
            raw = None
            local = self.local.get(kind, key)
            if local is not None:
                return Lookup(local[2], "local", None)
            if self._redis is None:
                return Lookup(None, None, None)
            try:
                raw = await self._call(lambda r: r.get(_RESULT_PREFIX + key))
            except _Unavailable:
                return Lookup(None, None, None)
        elif self._redis is None:
            generation = self._local_generation(namespace)
            raw = None
        else:
            async def both(r: Any) -> list[Any]:
                async with r.pipeline(transaction=False) as pipe:
                    pipe.mget(_GEN_PREFIX + namespace, _SHARED_KEY)
                    pipe.get(_RESULT_PREFIX + key)
                    result: list[Any] = await pipe.execute()
                    return result

            try:
                (own, shared), raw = await self._call(both)
                if shared is None:
                    shared = await self._seed_shared()
            except _Unavailable:
                return Lookup(None, None, None, cacheable=False)
            generation = (int(own or 0), int(shared))
        if namespace is not None:
            # Generations only grow: an entry from an older one is dead for good.
            local = self.local.get(kind, key, lambda entry: entry[1] == generation)
            if local is not None:
                return Lookup(local[2], "local", generation)
        if raw is None:
            if self._redis is None:
                return Lookup(None, None, generation)
            self.redis_misses += 1
            return Lookup(None, None, generation, redis_lookup=True)
        expires_at, stored_generation, value = _unwrap(raw)
        remaining = expires_at - time.time()
        if remaining <= 0 or stored_generation != generation:
            self.redis_misses += 1
            return Lookup(None, None, generation, redis_lookup=True)
        self.redis_hits += 1
        self.local.put(kind, key, (expires_at, generation, value), min(self.local_ttl, remaining))
        return Lookup(value, "redis", generation, redis_lookup=True)

    async def put(self, kind: str, key: str, value: bytes, ttl: float, *,
                  generation: Generation | None = None) -> bool:
        """Store in both tiers with an absolute expiry ``ttl`` seconds from now (see
        :meth:`lifetime`; L1 keeps it at most ``local_ttl``); False if not cached.

        ``generation`` is the one :meth:`get` returned before the result was computed, so a
        write that raced the computation leaves the entry already stale.
        """
        if ttl <= 0:
            return False
        if len(value) > self.max_value_bytes:
            self.oversize += 1
            return False
        expires_at = time.time() + ttl
        self.local.put(kind, key, (expires_at, generation, value), min(self.local_ttl, ttl))
        if self._redis is not None:
            wrapped = _wrap(expires_at, generation, value)
            with contextlib.suppress(_Unavailable):
                await self._call(lambda r: r.set(_RESULT_PREFIX + key, wrapped,
                                                 px=max(1, int(ttl * 1000))))
        return True

    def _local_generation(self, namespace: str) -> Generation:
        return self._local_generations.get(namespace, 0), self._local_shared

    def clear_local(self) -> None:
        self.local.clear()

    async def clear(self) -> int:
        """Drop every cached result: this process's L1 and, with Redis, every instance's L2
        entries (returns how many). Other processes' L1 entries age out within their
        local TTL. Memory generations are kept: they only ever grow.

        Raises :class:`RedisUnavailable` when Redis is configured but unreachable (L1 is
        cleared all the same).
        """
        self.local.clear()
        if self._redis is None:
            return 0

        async def unlink_results(r: Any) -> int:
            deleted = 0
            batch: list[bytes] = []
            async for key in r.scan_iter(match=_RESULT_PREFIX + "*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += await r.unlink(*batch)
                    batch.clear()
            if batch:
                deleted += await r.unlink(*batch)
            return deleted

        # A large keyspace takes many round trips (each within the socket timeout): the whole
        # sweep gets a budget of its own, not one call's.
        return int(await self._call(unlink_results, timeout=_CLEAR_BUDGET))

    async def ping(self) -> RedisStatus:
        """Whether Redis answers now (not configured is a state, not a failure)."""
        if self._redis is None:
            return RedisStatus("not configured")
        if not self.breaker.allow():
            return RedisStatus("unavailable", "circuit open")
        try:
            await self._call(lambda r: r.ping())
        except _Unavailable as exc:
            return RedisStatus("unavailable", type(exc.__cause__).__name__)
        return RedisStatus("ok")

    def stats(self) -> dict[str, Any]:
        local = self.local.stats()
        lookups = self.redis_hits + self.redis_misses
        return {
            "local": local,
            "redis": {
                "configured": self._redis is not None,
                "hits": self.redis_hits,
                "misses": self.redis_misses,
                "hit_rate": 100.0 * self.redis_hits / lookups if lookups else 0.0,
                "errors": self.redis_errors,
                "circuit": self.breaker.state,
                "circuit_trips": self.breaker.trips,
            },
            "oversize_skipped": self.oversize,
            # What the tuning resolved to (TMWS_CACHE_TTL, TMWS_CACHE_MAX_SIZE,
            # TMWS_CACHE_LOCAL_TTL or the CacheManager's arguments).
            "tuning": {"redis_ttl": self.redis_ttl, "ttl_scale": self.redis_ttl / BASE_TTL,
                       "local_ttl": self.local_ttl, "max_local_size": self.max_local_size,
                       "size_scale": self.max_local_size / BASE_LOCAL_SIZE},
        }


class _Unavailable(RedisUnavailable):
    """What :meth:`CacheManager._call` raises; callers outside this module catch the base."""


# expires_at (epoch seconds), then the generations the value was computed at (-1: none).
_ENVELOPE = struct.Struct("<dqq")


def _wrap(expires_at: float, generation: Generation | None, value: bytes) -> bytes:
    own, shared = generation if generation is not None else (-1, -1)
    return _ENVELOPE.pack(expires_at, own, shared) + value


def _unwrap(raw: bytes) -> tuple[float, Generation | None, bytes]:
    expires_at, own, shared = _ENVELOPE.unpack_from(raw)
    generation = None if own < 0 else (own, shared)
    return expires_at, generation, raw[_ENVELOPE.size:]


class Lookup(NamedTuple):
    """What :meth:`CacheManager.get` found."""

    value: bytes | None  # the encoded result, on a hit
    tier: str | None  # "local" or "redis", on a hit
    generation: Generation | None  # pass to put() for memory-dependent results
    cacheable: bool = True  # False: the generations cannot be known (Redis unreachable)
    redis_lookup: bool = False  # L1 missed and Redis answered the lookup (hit or miss)


def _scale(declared: int, setting: int, base: int) -> int:
    """``declared x setting / base``, at least 1 unless either is 0 (0 turns L1 off)."""
    if declared <= 0 or setting <= 0:
        return 0
    return max(1, round(declared * setting / base))
