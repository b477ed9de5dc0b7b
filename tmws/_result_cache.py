"""The engine's result-cache policy: which executions are cached, under which key, for how
long, and how concurrent misses of one key share a single run.

:mod:`tmws.cache` stores bytes in two tiers; this decides what goes in. A key holds
everything that changes an answer — namespace, normalised query, mode, the context fields
that are not identity, the pattern's own digest — and results read from memory are checked
against the namespace's memory generations, so a write makes them unreachable at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, NamedTuple

import msgspec

from tmws._native import cache_key, normalize_query
from tmws.cache import BASE_LOCAL_SIZE, CacheManager, Generation
from tmws.config import Settings
from tmws.metrics import ExecutionMetrics
from tmws.models import ExecutionMode, ExecutionResult, PatternDefinition, PatternType
from tmws.patterns import CacheSettings, PatternLibrary
from tmws.registry import PatternRegistry

__all__ = ["CacheSlot", "ResultCache", "cache_manager_for", "declared_sizes"]

# Context keys that only say who is asking; everything else may change the answer.
_IDENTITY_KEYS: Final = frozenset({"namespace", "request_id"})

_result_encoder = msgspec.msgpack.Encoder()
_result_decoder = msgspec.msgpack.Decoder(ExecutionResult)


class CacheSlot(NamedTuple):
    """Where one execution's result lives in the cache, and the hit if there was one."""

    key: str
    generation: Generation | None  # memory generations the lookup saw, for the put
    hit: ExecutionResult | None
    namespace: str | None = None  # the namespace whose memories the result reads


class ResultCache:
    """Lookups, single-flight and stores of execution results over a :class:`CacheManager`."""

    def __init__(self, cache: CacheManager, registry: PatternRegistry,
                 metrics: ExecutionMetrics, library: PatternLibrary) -> None:
        self.cache = cache
        self._registry = registry
        self._metrics = metrics
        self._cache_config: Mapping[PatternType, CacheSettings] = library.cache_config
        self._inflight: dict[str, asyncio.Future[ExecutionResult]] = {}
        self.singleflight_joins = 0
        self.unencodable = 0  # results answered but not cacheable (no msgpack form)
        self.tokens_saved = 0

    def use_library(self, library: PatternLibrary) -> None:
        """A reloaded pattern file: its per-type ``cache_config`` TTLs apply from now on."""
        self._cache_config = library.cache_config

    async def lookup(self, pattern: PatternDefinition | None, pattern_type: PatternType,
                     query: str, mode: ExecutionMode, namespace: str,
                     ctx: Mapping[str, Any], *, reads_memory: bool) -> CacheSlot | None:
        """The slot of this execution with its hit, if any; None when the answer must not
        be cached (the pattern says so, or memory generations are unknowable because Redis
        is unreachable)."""
        if pattern is not None and not pattern.cacheable:
            return None
        relevant = {k: v for k, v in ctx.items() if k not in _IDENTITY_KEYS} if ctx else None
        key = cache_key([namespace, normalize_query(query), mode.value,
                         msgspec.json.encode(relevant, order="sorted") if relevant else "",
                         self._registry.cache_identity(pattern)])
        reads = namespace if reads_memory else None
        found = await self.cache.get(pattern_type, key, namespace=reads)
        if not found.cacheable:
            return None
        self._metrics.cache_lookup(found.tier, found.redis_lookup)
        hit = None
        if found.value is not None:
            hit = _result_decoder.decode(found.value)  # a fresh object: safe to mark in place
            self.tokens_saved += hit.tokens_used
            hit.tokens_used = 0
            hit.cache_hit = True
            hit.metadata["cache_tier"] = found.tier
        return CacheSlot(key, found.generation, hit, reads)

    def running(self, slot: CacheSlot) -> bool:
        """Whether this slot's miss is already being computed in this process."""
        return slot.key in self._inflight

    async def compute_once(self, slot: CacheSlot, pattern: PatternDefinition | None,
                           pattern_type: PatternType,
                           compute: Callable[[], Awaitable[ExecutionResult]]
                           ) -> ExecutionResult:
        """Run ``compute`` for a miss and cache a successful, complete result; concurrent
        misses of the same key wait for that one run and share its answer (its tokens are
        counted once)."""
        key = slot.key
        joined = self._inflight.get(key)
        if joined is not None:
            self.singleflight_joins += 1
            shared = await asyncio.shield(joined)
            return msgspec.structs.replace(shared, tokens_used=0)
        flight: asyncio.Future[ExecutionResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = flight
        try:
            result = await compute()
            if result.success and not result.metadata.get("partial"):
                encoded = _encode(result)
                if encoded is not None:
                    await self.cache.put(pattern_type, key, encoded,
                                         self.ttl(pattern, pattern_type),
                                         generation=slot.generation,
                                         namespace=slot.namespace)
                else:
                    self.unencodable += 1
            flight.set_result(result)
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: joiners re-raise it, nobody else must
            raise
        finally:
            del self._inflight[key]
        return result

    def ttl(self, pattern: PatternDefinition | None, pattern_type: PatternType) -> float:
        """The pattern's cache_ttl, else its type's (cache_config), else 300 s, scaled by
        TMWS_CACHE_TTL / 300 (or the given CacheManager's redis_ttl): tmws.cache says why."""
        if pattern is not None and pattern.cache_ttl is not None:
            return self.cache.lifetime(pattern.cache_ttl)
        type_config = self._cache_config.get(pattern_type)
        return self.cache.lifetime(type_config.ttl if type_config else None)

    def stats(self) -> dict[str, Any]:
        return {**self.cache.stats(), "singleflight_joins": self.singleflight_joins,
                "unencodable_skipped": self.unencodable}


def cache_manager_for(settings: Settings, library: PatternLibrary) -> CacheManager:
    """The two-tier cache the settings and the pattern file's cache_config describe."""
    return CacheManager(
        redis_url=settings.redis_url, local_ttl=settings.cache_local_ttl,
        redis_ttl=settings.cache_ttl, max_local_size=settings.cache_max_size,
        type_sizes=declared_sizes(library),
        redis_timeout=settings.redis_timeout,
        redis_max_connections=settings.redis_max_connections,
        max_value_bytes=settings.cache_max_value_bytes,
        breaker_failures=settings.cache_breaker_failures,
        breaker_reset=settings.cache_breaker_reset)


def declared_sizes(library: PatternLibrary) -> dict[str, int]:
    """L1 entries per pattern type as the pattern file declares them (cache_config), before
    TMWS_CACHE_MAX_SIZE scales them."""
    return {t.value: library.cache_config[t].max_size if t in library.cache_config
            else BASE_LOCAL_SIZE for t in PatternType}


def _encode(result: ExecutionResult) -> bytes | None:
    """The cached form of a result, or None if it has no msgpack form (an integer beyond
    64 bits in a handler's output): such a result is answered, just not cached."""
    try:
        return _result_encoder.encode(result)
    except (OverflowError, TypeError, ValueError):
        return None
