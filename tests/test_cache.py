from __future__ import annotations

from tmws.cache import LocalCache, TieredLocalCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_absolutely() -> None:
    clock = Clock()
    cache: LocalCache[str] = LocalCache(10, clock=clock)
    cache.put("k", "v", ttl=10)
    clock.now = 9
    assert cache.get("k") == "v"  # a hit does not extend the life
    clock.now = 10
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
