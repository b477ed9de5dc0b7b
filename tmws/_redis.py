"""Redis behind one interface, whichever way it is deployed: one server, a Cluster, Sentinel.

``TMWS_REDIS_URL`` names:

- one server: ``redis://``, ``rediss://`` or ``unix://``. If that server is a node of a Redis
  Cluster (``INFO cluster`` says ``cluster_enabled:1``), the whole cluster is used, discovered
  from it: any node's address will do.
- a Sentinel-managed master: ``redis+sentinel://[[user]:password@]host:port[,host:port…]/
  service[/db]`` (``rediss+sentinel://`` for TLS to the data nodes). The password is the data
  nodes'; ``?sentinel_password=`` gives the Sentinels' own, if they have one.

Commands are grouped by the node that serves their keys (:meth:`RedisTopology.node`): one
pipeline per node, so a group of keys that share a hash tag is one round trip to one node,
and a failing node stops only the groups it serves (the cache keeps a circuit breaker per
node). A single server and a Sentinel master are one node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import parse_qs, unquote

import msgspec

__all__ = ["ONE_NODE", "SENTINEL_SCHEMES", "Command", "RedisTopology", "connect",
           "parse_sentinel_url"]

SENTINEL_SCHEMES: Final = ("redis+sentinel://", "rediss+sentinel://")
# The node name of a single server or a Sentinel master, and of calls on no key in particular
# (the circuit breaker they go through).
ONE_NODE: Final = "redis"

# (the key that routes it, (command, arguments...))
Command = tuple[str, tuple[Any, ...]]


class SentinelAddress(msgspec.Struct, frozen=True):
    """What a ``redis+sentinel://`` URL says."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None
    ssl: bool


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Parse a ``redis+sentinel://`` URL; ValueError says what is wrong (never echoing
    the password)."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "26379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel address {item.strip()!r} is not host:port")
        sentinels.append((host, int(port)))
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts:
        raise ValueError("names no service (redis+sentinel://host:port/<service>[/db])")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("the path must be /<service>[/<db number>]")
    options = parse_qs(query)
    unknown = sorted(set(options) - {"sentinel_password"})
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} (only sentinel_password)")
    sentinel_password = options.get("sentinel_password", [None])[-1]
    return SentinelAddress(sentinels, parts[0], int(parts[1]) if len(parts) == 2 else 0,
                           username, password, sentinel_password, scheme == "rediss+sentinel")


class RedisTopology:
    """A connected client and where its keys live."""

    def __init__(self, kind: str, client: Any, *, sentinel: Any = None,
                 service: str | None = None) -> None:
        self.kind = kind  # "single" | "cluster" | "sentinel"
        self.client = client
        self._sentinel = sentinel
        self._service = service
        self._sentinel_replicas = 0
        self._refreshed = -1e9  # when the replicas were last asked for

    def node(self, key: str) -> str:
        """The node serving ``key`` (its name keys the circuit breakers)."""
        if self.kind != "cluster":
            return ONE_NODE
        node = self.client.get_node_from_key(key)
        return str(node.name)

    def nodes(self) -> list[str]:
        """Every node that serves keys (a cluster's primaries)."""
        if self.kind != "cluster":
            return [ONE_NODE]
        return sorted(str(n.name) for n in self.client.get_primaries())

    def target(self, node: str) -> dict[str, Any]:
        """Keyword arguments that send a keyless command to ``node``."""
        if self.kind != "cluster":
            return {}
        return {"target_nodes": self.client.get_node(node_name=node)}

    async def replicas(self, key: str) -> int:
        """Replicas of ``key``'s master, as last known: how many a WAIT can ask for."""
        now = asyncio.get_running_loop().time()
        if self.kind == "cluster":
            slot = self.client.keyslot(key)
            nodes = self.client.nodes_manager.slots_cache.get(slot, ())
            if len(nodes) < 2 and now - self._refreshed > 5.0:
                # A replica that joined since the slot map was read (a failed master back as
                # a replica of its successor): read it again, at most every 5 s.
                self._refreshed = now
                await self.client.nodes_manager.initialize()
                nodes = self.client.nodes_manager.slots_cache.get(slot, ())
            return min(1, len(nodes) - 1) if nodes else 0
        if self.kind == "sentinel":
            if now - self._refreshed > 5.0:  # sentinels are asked at most every 5 s
                self._refreshed = now
                replicas = await self._sentinel.discover_slaves(self._service)
                self._sentinel_replicas = min(1, len(replicas))
            return self._sentinel_replicas
        return 0

    async def pipeline(self, commands: Sequence[Command], *, wait_replicas_ms: int = 0
                       ) -> list[Any]:
        """Run ``commands`` (all served by one node) in one pipeline. With
        ``wait_replicas_ms``, a final WAIT (on the same connection, so it covers these
        writes) asks one replica, if the node has any, to confirm them; the last reply is
        then how many did."""
        kwargs: dict[str, Any] = {}
        if self.kind == "cluster" and commands:
            kwargs = {"target_nodes": self.client.get_node_from_key(commands[0][0])}
        async with self.client.pipeline(transaction=False) as pipe:
            for _, command in commands:
                pipe.execute_command(*command)
            if wait_replicas_ms and commands and await self.replicas(commands[0][0]):
                pipe.execute_command("WAIT", 1, wait_replicas_ms, **kwargs)
            return list(await pipe.execute())

    async def close(self) -> None:
        await self.client.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()


async def connect(url: str, *, timeout: float, max_connections: int) -> RedisTopology:
    """A client for ``url``, of the kind its server turns out to be (see the module
    docstring). Raises whatever the connection raised when the server cannot be asked."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.sentinel import Sentinel

    socket: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if url.startswith(SENTINEL_SCHEMES):
        address = parse_sentinel_url(url)
        sentinel_kwargs: dict[str, Any] = dict(socket)
        if address.sentinel_password is not None:
            sentinel_kwargs["password"] = address.sentinel_password
        sentinel = Sentinel(address.sentinels, sentinel_kwargs=sentinel_kwargs, **socket)
        client = sentinel.master_for(
            address.service, db=address.db, username=address.username,
            password=address.password, ssl=address.ssl, max_connections=max_connections,
            retry_on_timeout=False)
        return RedisTopology("sentinel", client, sentinel=sentinel, service=address.service)

    # A blocking pool: at the connection limit a call waits (within the timeout) for a free
    # connection instead of failing, which would count as a Redis outage.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, retry_on_timeout=False,
        **socket)
    single = aioredis.Redis(connection_pool=pool)
    try:
        info = await single.info("cluster")
    except BaseException:
        await single.aclose(close_connection_pool=True)
        raise
    if not info.get("cluster_enabled"):
        return RedisTopology("single", single)
    await single.aclose(close_connection_pool=True)
    cluster = RedisCluster.from_url(url, max_connections=max_connections, **socket)
    try:
        await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    return RedisTopology("cluster", cluster)
