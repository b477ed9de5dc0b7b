"""Redis as operators scale it: a Cluster (3 masters + 3 replicas) and a Sentinel setup
(a master, a replica, 3 sentinels), all real redis-server processes on loopback ports.

``redis_cluster`` and ``redis_sentinel`` are shared by a session (nothing kills them);
``private_redis_cluster`` / ``private_redis_sentinel`` are a test's own, to kill a master of.
Test modules that set ``pytestmark = pytest.mark.redis_topologies`` run every test that takes
``redis_url`` against a single server, the Cluster and Sentinel (tests/conftest.py).
A redis-server that does not start fails the test; nothing skips.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from tests.loopback import free_port
from tmws._redis import parse_sentinel_url

__all__ = ["RedisClusterServers", "RedisSentinelServers", "private_redis_cluster",
           "private_redis_sentinel", "raw_redis", "redis_cluster", "redis_sentinel"]

SERVICE = "tmws-test"
# Short enough that a killed master is replaced within a few seconds.
NODE_TIMEOUT_MS = 1000


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(100):
        port = random.randint(20000, 55000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    pytest.fail("no free pair of ports for a cluster node")


def _redis_server(directory: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)


def _await(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    pytest.fail(f"{what} within {timeout:.0f} s (last error: {last})")


class _Servers:
    def __init__(self) -> None:
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)


class RedisClusterServers(_Servers):
    """3 masters, each with a replica; ``url`` names one node, as an operator would."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.ports = [cluster_port() for _ in range(6)]
        try:
            for port in self.ports:
                self.processes[port] = _redis_server(
                    directory / str(port), port, "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # A replica takes over however long it was cut off (tests kill masters
                    # right after writes).
                    "--cluster-replica-validity-factor", "0")
            for port in self.ports:
                _await(lambda p=port: _node(p).ping(), f"cluster node {port} up")
            created = subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", "1",
                 "--cluster-yes"], capture_output=True, text=True, timeout=60)
            if created.returncode != 0:
                pytest.fail(f"redis-cli --cluster create failed: {created.stdout[-2000:]}"
                            f"{created.stderr[-2000:]}")
            _await(lambda: self.healthy(replicas=3), "the cluster is ok with its replicas")
        except BaseException:
            self.stop()
            raise
        self.url = f"redis://127.0.0.1:{self.ports[0]}"

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=next(iter(self.processes)))

    def healthy(self, *, replicas: int = 0) -> bool:
        """Every live node says the cluster is ok, every slot has a live master, and at
        least ``replicas`` replicas serve (CLUSTER SLOTS lists a replica once in sync)."""
        for port in self.processes:
            info = _node(port).cluster("info")
            if info.get("cluster_state") != "ok":
                return False
        client = self.client()
        try:
            primaries: list[Any] = client.get_primaries()  # type: ignore[no-untyped-call]
            serving: list[Any] = client.get_replicas()  # type: ignore[no-untyped-call]
            return all(n.port in self.processes for n in primaries) and len(serving) >= replicas
        finally:
            client.close()

    def master_of(self, key: str) -> int:
        client = self.client()
        try:
            node: Any = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
            return int(node.port)
        finally:
            client.close()

    def kill_master_of(self, key: str) -> int:
        port = self.master_of(key)
        self.kill(port)
        return port


class RedisSentinelServers(_Servers):
    """A master with one replica, watched by 3 sentinels (quorum 2)."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        try:
            self.processes[self.master_port] = _redis_server(
                directory / "master", self.master_port)
            self.processes[self.replica_port] = _redis_server(
                directory / "replica", self.replica_port,
                "--replicaof", "127.0.0.1", str(self.master_port))
            for port in self.sentinel_ports:
                conf = directory / f"sentinel-{port}.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
                    f"sentinel down-after-milliseconds {SERVICE} {NODE_TIMEOUT_MS}\n"
                    f"sentinel failover-timeout {SERVICE} 5000\n"
                    f"sentinel parallel-syncs {SERVICE} 1\n")
                self.processes[port] = subprocess.Popen(
                    ["redis-server", str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _await(self._replicating, "the replica is in sync")
            _await(self._watched, "the sentinels see the master and its replica")
        except BaseException:
            self.stop()
            raise
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}"

    def _replicating(self) -> bool:
        info = _node(self.replica_port).info("replication")
        return info.get("master_link_status") == "up"

    def _watched(self) -> bool:
        for port in self.sentinel_ports:
            state: Any = _node(port).sentinel_master(SERVICE)
            if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    def master_port_now(self) -> int:
        for sentinel in self.sentinel_ports:
            if sentinel in self.processes:
                address: Any = _node(sentinel).sentinel_get_master_addr_by_name(SERVICE)
                _host, port = address
                return int(port)
        raise AssertionError("no sentinel is running")

    def kill_master(self) -> int:
        port = self.master_port_now()
        self.kill(port)
        return port


def raw_redis(url: str) -> Any:
    """A synchronous client for any URL the tests use (one server, a Cluster node, Sentinel),
    to look at keys directly."""
    if url.startswith("redis+sentinel://"):
        address = parse_sentinel_url(url)
        return Sentinel(address.sentinels).master_for(address.service)
    client = redis.Redis.from_url(url)
    if client.info("cluster").get("cluster_enabled"):
        client.close()
        return RedisCluster.from_url(url)
    return client


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelServers]:
    servers = RedisSentinelServers(tmp_path_factory.mktemp("redis-sentinel"))
    yield servers
    servers.stop()


@pytest.fixture
def private_redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(tmp_path / "cluster")
    yield servers
    servers.stop()


@pytest.fixture
def private_redis_sentinel(tmp_path: Path) -> Iterator[RedisSentinelServers]:
    servers = RedisSentinelServers(tmp_path / "sentinel")
    yield servers
    servers.stop()
