"""The in-process result cache: one bounded LRU per pattern type, absolute TTLs.

Keys are built by the engine and carry everything that changes an answer (namespace,
normalised query, mode, relevant context, pattern-set version and, for results read
from memory, the namespace's memory generation), so entries never need invalidating:
a change simply makes new keys.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["LocalCache", "TieredLocalCache"]

V = TypeVar("V")


class LocalCache(Generic[V]):
    """A bounded LRU with absolute expiry (a hit does not extend an entry's life)."""

    def __init__(self, max_size: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires, value = entry
        if expires <= self._clock():
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

    def get(self, kind: str, key: Hashable) -> V | None:
        return self._caches[kind].get(key)

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
