"""Redis topologies (tmws/_redis.py) through the cache and the rate limiter: a single server,
a Cluster and Sentinel, all real; a master killed under load."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from redis.crc import key_slot

from tests.fix_redis import RedisClusterServers, RedisSentinelServers, raw_redis
from tmws._redis import parse_sentinel_url
from tmws.cache import CacheManager, generation_key, result_key
from tmws.config import Settings
from tmws.errors import ConfigError
from tmws.ratelimit import RateLimiter

pytestmark = pytest.mark.redis_topologies


# -- URLs ---------------------------------------------------------------------------------

def test_sentinel_urls_parse() -> None:
    address = parse_sentinel_url(
        "redis+sentinel://app:s%40cret@10.0.0.1:26379,10.0.0.2:26380,[::1]:26381/cache/3"
        "?sentinel_password=watch")
    assert address.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381)]
    assert (address.service, address.db, address.username, address.password) == (
        "cache", 3, "app", "s@cret")
    assert address.sentinel_password == "watch" and not address.ssl
    plain = parse_sentinel_url("rediss+sentinel://sentinel.internal/tmws")
    assert plain.sentinels == [("sentinel.internal", 26379)] and plain.db == 0 and plain.ssl
    assert plain.password is None and plain.username is None


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+sentinel://10.0.0.1:26379", "names no service"),
    ("redis+sentinel://10.0.0.1:26379/", "names no service"),
    ("redis+sentinel://10.0.0.1:port/cache", "'10.0.0.1:port' is not host:port"),
    ("redis+sentinel://10.0.0.1:99999/cache", "is not host:port"),
    ("redis+sentinel://a:1,,b:2/cache", "'' is not host:port"),
    ("redis+sentinel://a:1/cache/zero", "/<service>[/<db number>]"),
    ("redis+sentinel://a:1/cache/0/extra", "/<service>[/<db number>]"),
    ("redis+sentinel://a:1/cache?password=x", "unknown option 'password'"),
])
def test_bad_sentinel_urls_are_refused_by_name(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"TMWS_REDIS_URL": url})
    assert "TMWS_REDIS_URL" in str(refused.value) and problem in str(refused.value)


def test_config_never_echoes_a_sentinel_password() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"TMWS_REDIS_URL": "redis+sentinel://u:hunter2@a:1/"})
    assert "hunter2" not in str(refused.value)
    settings = Settings.from_env({"TMWS_REDIS_URL": "redis+sentinel://u:hunter2@a:1/svc"})
    assert settings.redis_url is not None


# -- keys -----------------------------------------------------------------------------------

@pytest.mark.parametrize("namespace", ["", "team-a", "{braces}", "}{", "ü\udcff", "x" * 500])
def test_a_namespace_generation_and_its_results_share_a_slot(namespace: str) -> None:
    slot = key_slot(generation_key(namespace).encode())
    for key in ("k", "0" * 64, "{other}"):
        assert key_slot(result_key(key, namespace).encode()) == slot
    assert "{" not in result_key("k")  # results that read no memory spread over slots


async def test_the_topology_is_detected_from_the_url(redis_url: str,
                                                     request: pytest.FixtureRequest) -> None:
    expected = request.node.callspec.params["redis_url"]
    cache = CacheManager(redis_url=redis_url)
    try:
        assert cache.topology is None  # connected on first use
        assert (await cache.ping()).state == "ok"
        assert cache.topology == expected
        stats = cache.stats()["redis"]
        assert stats["topology"] == expected and stats["circuit"] == "closed"
        if expected == "cluster":  # one breaker per master, beside the deployment's
            assert len(set(stats["circuits"]) - {"redis"}) == 3
    finally:
        await cache.close()


async def test_writes_are_confirmed_by_a_replica(redis_url: str,
                                                 request: pytest.FixtureRequest) -> None:
    """A generation bump waits for a replica (Cluster, Sentinel): the replica holds it when
    bump() returns."""
    topology = request.node.callspec.params["redis_url"]
    cache = CacheManager(redis_url=redis_url)
    namespace = uuid.uuid4().hex
    try:
        for _ in range(3):
            await cache.bump(namespace, shared=True)
        assert cache.stats()["redis"]["unreplicated_writes"] == 0
        assert cache.pending_bumps == 0
        generation = await cache.generation(namespace)
        assert generation is not None and generation[0] == 3
        if topology != "single":
            assert await _replica_value(request, generation_key(namespace)) == b"3"
    finally:
        await cache.close()


async def _replica_value(request: pytest.FixtureRequest, key: str) -> bytes | None:
    import redis

    topology = request.node.callspec.params["redis_url"]
    if topology == "cluster":
        servers: Any = request.getfixturevalue("redis_cluster")
        client = servers.client()
        try:
            replica = client.get_node_from_key(key, replica=True)
            port = int(replica.port)
        finally:
            client.close()
        direct = redis.Redis(host="127.0.0.1", port=port)
        direct.readonly()
    else:
        servers = request.getfixturevalue("redis_sentinel")
        direct = redis.Redis(host="127.0.0.1", port=servers.replica_port)
    try:
        value: Any = direct.get(key)
        return None if value is None else bytes(value)
    finally:
        direct.close()


# -- failover -------------------------------------------------------------------------------

class _Service:
    """Two instances (a writer and a reader) over one Redis, as a store/recall workload:
    a cached "recall" answer is how many writes had been acknowledged when it was computed.
    A hit answering fewer writes than were acknowledged before the lookup began is a lost
    change."""

    def __init__(self, url: str, namespace: str) -> None:
        settings = {"redis_timeout": 0.5, "breaker_failures": 3, "breaker_reset": 0.3}
        self.writer = CacheManager(redis_url=url, **settings)  # type: ignore[arg-type]
        self.reader = CacheManager(redis_url=url, **settings)  # type: ignore[arg-type]
        self.limiter = RateLimiter(1_000_000, 60, cache=self.reader)
        self.namespace = namespace
        self.acknowledged = 0
        self.stale: list[tuple[int, int]] = []
        self.hits_after: list[float] = []
        self.limited_by = {"redis": 0, "local": 0}

    async def write(self) -> None:
        await self.writer.bump(self.namespace, shared=False)
        self.acknowledged += 1

    async def read(self, cache: CacheManager) -> None:
        known = self.acknowledged
        found = await cache.get("memory", "recall", namespace=self.namespace)
        if found.value is not None:
            answered = int(found.value)
            if answered < known:
                self.stale.append((answered, known))
            self.hits_after.append(time.monotonic())
        elif found.cacheable and found.generation is not None:
            await cache.put("memory", "recall", str(self.acknowledged).encode(), ttl=300,
                            generation=found.generation, namespace=self.namespace)
        decision = await self.limiter.hit("client")
        self.limited_by[decision.backend] += 1

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.gather(self.read(self.reader), self.read(self.writer))
            await self.write()
            await asyncio.gather(self.read(self.reader), self.read(self.writer))
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        await self.limiter.close()
        await self.writer.close()
        await self.reader.close()


def _namespace_off(servers: RedisClusterServers, avoid: str) -> str:
    """A namespace whose slot's master is not ``avoid``'s (the shared counter's)."""
    while True:
        namespace = uuid.uuid4().hex
        if servers.master_of(generation_key(namespace)) != servers.master_of(avoid):
            return namespace


async def test_killing_a_cluster_master_under_load_loses_no_write(
        private_redis_cluster: RedisClusterServers) -> None:
    servers = private_redis_cluster
    namespace = _namespace_off(servers, "tmws:gen-shared")
    killed: list[int] = []
    service = _Service(servers.url, namespace)
    try:
        # A replica takes over within a few seconds (cluster-node-timeout 1 s).
        await _load_through_failover(
            service, lambda: killed.append(servers.kill_master_of(generation_key(namespace))),
            servers.healthy)
        assert servers.master_of(generation_key(namespace)) != killed[0]
        assert await service.reader.generation(namespace) is not None
    finally:
        await service.close()


async def test_killing_the_sentinel_master_under_load_loses_no_write(
        private_redis_sentinel: RedisSentinelServers) -> None:
    servers = private_redis_sentinel
    killed: list[int] = []
    service = _Service(servers.url, uuid.uuid4().hex)
    try:
        await _load_through_failover(service, lambda: killed.append(servers.kill_master()),
                                     lambda: servers.master_port_now() != killed[0])
    finally:
        await service.close()


async def _load_through_failover(service: _Service, kill: Callable[[], object],
                                 taken_over: Callable[[], bool]) -> None:
    """The store/recall load before, through and after a master is killed (``kill``) and
    replaced (``taken_over``); then what every topology must show."""
    await service.run(1.0)
    assert service.hits_after, "the cache answered nothing before the failover"
    kill()
    killed_at = time.monotonic()
    load = asyncio.create_task(service.run(60.0))
    while not taken_over():
        await asyncio.sleep(0.1)
    await asyncio.sleep(3.0)
    load.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await load
    await service.run(2.0)
    assert service.stale == [], "a write acknowledged before a lookup was not seen"
    assert service.hits_after[-1] > killed_at, "no cache hit after the failover"
    # Recovered in place: the same clients, every circuit closed, nothing pending.
    for cache in (service.writer, service.reader):
        stats = cache.stats()["redis"]
        assert stats["circuit"] == "closed" and stats["pending_bumps"] == 0
        assert (await cache.ping()).state == "ok"
    assert (await service.limiter.hit("client")).backend == "redis"


async def test_raw_clients_see_what_the_cache_wrote(redis_url: str) -> None:
    cache = CacheManager(redis_url=redis_url)
    key = uuid.uuid4().hex
    client = raw_redis(redis_url)
    try:
        assert await cache.put("infrastructure", key, b"v", ttl=30)
        assert 0 < client.pttl(result_key(key)) <= 30_000
    finally:
        client.close()
        await cache.close()
