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
import hashlib
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Final, Generic, NamedTuple, TypeVar

from tmws._redis import ONE_NODE, Command, RedisTopology, connect
from tmws.errors import RedisUnavailable
from tmws.health import RedisStatus

__all__ = ["BASE_LOCAL_SIZE", "BASE_TTL", "REPLICA_WAIT_MS", "WRITE_PATIENCE", "CacheManager",
           "CircuitBreaker", "Generation", "LocalCache", "Lookup", "TieredLocalCache",
           "generation_key", "result_key"]

# The reference points of the scaling above: the defaults (TMWS_CACHE_TTL=300,
# TMWS_CACHE_MAX_SIZE=1000), at which the pattern file's figures apply unchanged.
BASE_TTL: Final = 300
BASE_LOCAL_SIZE: Final = 1000

V = TypeVar("V")
# (namespace generation, shared generation, epoch): changes on every write a namespace can
# read (the counters) and whenever Redis may have lost one of those writes (the epoch).
Generation = tuple[int, int, int]


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


# Keys are hash-tagged so that what one lookup reads together lives on one node of a
# Cluster: a namespace's generation and the results computed from its memories share the
# tag of that namespace (a digest: namespaces are arbitrary strings). The shared counter is
# the one key every memory lookup also reads, in a pipeline of its own when it lives on
# another node.
_GEN_PREFIX = "tmws:gen:"
_SHARED_KEY = "tmws:gen-shared"
# The shared counter starts at a random value, not 0: Redis restarted without its data
# (or flushed) would otherwise count every namespace from 0 again, and an L1 entry from
# before the loss would match a generation that has since seen writes. A fresh random
# start makes every earlier generation pair unreachable instead.
_SEED_BITS = 40
# v2: entries carry the epoch (an envelope of another size than v1's "tmws:r:<key>").
_RESULT_PREFIX = "tmws:r:v2:"
_CLEAR_BUDGET = 300.0  # seconds for clear() to sweep every result key
# How long a memory write waits for a replica to confirm its generation bump (Cluster and
# Sentinel): a failover in that window would otherwise lose the bump, and a result cached
# before the write would be served again.
REPLICA_WAIT_MS = 100
# The longest a memory write waits for its generation bump to land when Redis fails, before
# it is acknowledged all the same (and the bump retried in the background).
WRITE_PATIENCE = 1.0
# Reads keys and the replication ID of the master serving them, in one call. The ID changes
# when a replica is promoted and when a server restarts, exactly when bumps acknowledged by
# the master may be missing from the data now served: every result cached under the old ID
# then becomes unreachable (the epoch of a generation).
_READ_LUA = """
local values = {}
for i, key in ipairs(KEYS) do values[i] = redis.call('GET', key) end
local info = redis.call('INFO', 'replication')
values[#KEYS + 1] = string.match(info, 'master_replid:(%x+)') or ''
return values
"""


def _tag(namespace: str) -> str:
    digest = hashlib.blake2b(namespace.encode("utf-8", "surrogatepass"), digest_size=8)
    return "{" + digest.hexdigest() + "}"


def generation_key(namespace: str) -> str:
    """The Redis key of ``namespace``'s generation."""
    return _GEN_PREFIX + _tag(namespace)


def result_key(key: str, namespace: str | None = None) -> str:
    """The Redis key of a cached result (in its namespace's slot when it reads memories)."""
    if namespace is None:
        return _RESULT_PREFIX + key
    return _RESULT_PREFIX + _tag(namespace) + ":" + key


class CacheManager:
    """Results in two tiers: a bounded in-process LRU (L1) in front of Redis (L2).

    Every Redis call has a timeout and goes through the circuit breaker of the node it
    asks (one for a single server or a Sentinel master, one per node of a Cluster:
    :mod:`tmws._redis`); when Redis fails, results are served from L1 or executed — never
    failed because of the cache. Memory generations (bumped by every write) live in Redis
    so that a write on one instance is seen by all; while Redis is unreachable, results
    that depend on memory are neither read from nor written to any cache, since another
    instance's writes cannot be seen.
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
        longest L1 trusts an entry. See the module docstring for why scaling. ``redis_url``:
        one server, any node of a Cluster, or ``redis+sentinel://`` (:mod:`tmws._redis`)."""
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
        self._breaker_failures = breaker_failures
        self._breaker_reset = breaker_reset
        self._breakers: dict[str, CircuitBreaker] = {}
        self._timeout = redis_timeout
        self._url = redis_url
        self._max_connections = redis_max_connections
        # Connected on first use: whether the URL names a Cluster is asked of the server.
        self._topology: RedisTopology | None = None
        self._connecting = asyncio.Lock()
        self._local_generations: dict[str, int] = {}
        self._local_shared = 0
        self.redis_hits = self.redis_misses = self.redis_errors = self.oversize = 0
        self.unreplicated_writes = 0  # generation bumps no replica confirmed in time
        self.pending_bumps = 0  # writes whose bump has not landed yet (retried)
        self._retrying: asyncio.Task[None] | None = None

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
        return self._url is not None

    @property
    def topology(self) -> str | None:
        """``single``, ``cluster`` or ``sentinel`` once connected; None before (or without
        Redis)."""
        return None if self._topology is None else self._topology.kind

    @property
    def circuit(self) -> str:
        """The worst state of the breakers: ``open`` while any node's circuit is open."""
        states = {b.state for b in self._serving_breakers().values()}
        for state in ("open", "half_open"):
            if state in states:
                return state
        return "closed"

    def _serving_breakers(self) -> dict[str, CircuitBreaker]:
        """The breakers of the nodes that serve keys now (and the deployment's): a failed
        master replaced by its replica serves nothing, so its open circuit says nothing."""
        if self._topology is None:
            return dict(self._breakers)
        try:
            serving = {ONE_NODE, *self._topology.nodes()}
        except Exception:  # slots not known (a cluster being resharded)
            return dict(self._breakers)
        return {node: b for node, b in self._breakers.items() if node in serving}

    def _breaker(self, node: str) -> CircuitBreaker:
        breaker = self._breakers.get(node)
        if breaker is None:
            breaker = self._breakers[node] = CircuitBreaker(self._breaker_failures,
                                                            self._breaker_reset)
        return breaker

    async def close(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrying
            self._retrying = None
        if self._topology is not None:
            topology, self._topology = self._topology, None
            await topology.close()

    async def _connect(self) -> RedisTopology:
        async with self._connecting:
            if self._topology is None:
                assert self._url is not None
                self._topology = await connect(self._url, timeout=self._timeout,
                                               max_connections=self._max_connections)
            return self._topology

    def _node(self, key: str | None) -> str:
        """The breaker a call on ``key`` goes through (before the first connection, and for
        calls on no key, the deployment's)."""
        if self._topology is None or key is None:
            return ONE_NODE
        try:
            return self._topology.node(key)
        except Exception:  # slots not known (a cluster being resharded): the deployment's
            return ONE_NODE

    async def _call(self, operation: Callable[[RedisTopology], Awaitable[Any]], *,
                    key: str | None = None, node: str | None = None,
                    timeout: float | None = None) -> Any:
        """Run one Redis operation under the breaker of the node serving ``key`` (or of
        ``node``) and the timeout (default: the Redis timeout); raises _Unavailable."""
        if self._url is None:
            raise _Unavailable
        breaker = self._breaker(node or self._node(key))
        if not breaker.allow():
            raise _Unavailable
        try:
            async with asyncio.timeout(timeout or self._timeout):
                topology = self._topology or await self._connect()
                result = await operation(topology)
        except Exception as exc:  # connection, timeout, protocol: all mean "Redis failed"
            self.redis_errors += 1
            breaker.failure()
            raise _Unavailable from exc
        breaker.success()
        return result

    async def _commands(self, *commands: Command, wait: bool = False,
                        confirmed: list[bool] | None = None) -> list[Any]:
        """Run ``commands`` (each routed by its key): one pipeline per node
        that serves them, those of different nodes concurrently. ``wait``: writes, which a
        replica of each node is asked to confirm (:data:`REPLICA_WAIT_MS`); ``confirmed``
        gets, per node, whether one did (or the node has no replica to ask)."""
        if self._topology is None:
            await self._call(_connected)
        groups: dict[str, list[int]] = {}
        for index, command in enumerate(commands):
            groups.setdefault(self._node(command[0]), []).append(index)
        replies: list[Any] = [None] * len(commands)

        async def run(node: str, indexes: list[int]) -> None:
            batch = [commands[i] for i in indexes]
            answered = await self._call(
                lambda t: t.pipeline(batch, wait_replicas_ms=REPLICA_WAIT_MS if wait else 0),
                node=node)
            for i, reply in zip(indexes, answered, strict=False):
                replies[i] = reply
            replicated = len(answered) == len(batch) or int(answered[-1]) >= 1
            if not replicated:
                self.unreplicated_writes += 1
            if confirmed is not None:
                confirmed.append(replicated)

        if len(groups) == 1:
            [(node, indexes)] = groups.items()
            await run(node, indexes)
            return replies
        outcomes = await asyncio.gather(*(run(n, i) for n, i in groups.items()),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return replies

    async def run(self, operation: Callable[[Any], Awaitable[Any]], *,
                  key: str | None = None) -> Any:
        """Run ``operation(redis_client)`` for another Redis user (e.g. the rate limiter),
        sharing this cache's client, timeout and circuit breakers (that of the node serving
        ``key``, which the operation must only touch).

        Raises :class:`RedisUnavailable` when Redis is not configured or the circuit is open
        (``__cause__`` is None), or when the call failed or timed out (``__cause__`` says
        why; the failure counts in ``redis_errors`` and towards the breaker).
        """
        return await self._call(lambda t: operation(t.client), key=key)

    # -- generations --------------------------------------------------------------------

    async def generation(self, namespace: str) -> Generation | None:
        """What this namespace can read has changed iff this changes; None when unknowable
        (Redis configured but unreachable, or a write's bump still pending): then memory
        results must not be cached."""
        if self._url is None:
            return self._local_generation(namespace)
        if self.pending_bumps and not await self._land_pending():
            return None
        try:
            generation, _ = await self._read(namespace, None)
        except _Unavailable:
            return None
        return generation

    async def _read(self, namespace: str, result: str | None
                    ) -> tuple[Generation, bytes | None]:
        """``namespace``'s generation and, with ``result``, that result's stored bytes: one
        round trip (two scripts on two nodes of a Cluster, at once)."""
        own_keys = [generation_key(namespace)] + ([] if result is None else [result])
        if self._topology is None:
            await self._call(_connected)
        assert self._topology is not None
        if self._topology.kind == "cluster":
            # The shared counter lives in another slot: a script of its own.
            mine, common = await self._commands(
                (own_keys[0], ("EVAL", _READ_LUA, len(own_keys), *own_keys)),
                (_SHARED_KEY, ("EVAL", _READ_LUA, 1, _SHARED_KEY)))
            shared, replication = common[0], mine[-1] + b"|" + common[-1]
        else:  # one server: one script reads them all
            [mine] = await self._commands(
                (own_keys[0], ("EVAL", _READ_LUA, len(own_keys) + 1, *own_keys, _SHARED_KEY)))
            shared, replication = mine[-2], mine[-1]
        if shared is None:
            shared = await self._seed_shared()
        epoch = hashlib.blake2b(replication, digest_size=8).digest()
        raw = None if result is None else mine[1]
        return (int(mine[0] or 0), int(shared),
                int.from_bytes(epoch, "little") & 0x7FFFFFFFFFFFFFFF), raw

    async def _seed_shared(self) -> int:
        """The shared counter after a (re)start of Redis's data: a random start, set once
        whoever comes first (SET NX), read back."""
        start = secrets.randbits(_SEED_BITS) + 1
        _, shared = await self._commands((_SHARED_KEY, ("SET", _SHARED_KEY, start, "NX")),
                                         (_SHARED_KEY, ("GET", _SHARED_KEY)))
        return int(shared)

    async def bump(self, namespace: str, *, shared: bool) -> None:
        """A memory write: every cached result that could include it becomes unreachable.

        With replicas (Cluster, Sentinel), one is asked to confirm the bump before this
        returns, so that a failover right after it does not take it back. When the
        namespace's node fails or no replica confirms, the shared counter is bumped instead
        (it invalidates every namespace's memory results, and lives on another node of a
        Cluster unless the hash of the namespace says otherwise); when that fails too, it is
        retried for up to ``breaker_reset`` + the Redis timeout (at most
        :data:`WRITE_PATIENCE`) before this returns, then in
        the background, and until it lands this process caches no memory result.
        """
        self._local_generations[namespace] = self._local_generations.get(namespace, 0) + 1
        if shared:
            self._local_shared += 1
        if self._url is None:
            return
        # Seeded before any increment, so a lost counter never restarts at 1.
        seed: Command = (_SHARED_KEY, ("SET", _SHARED_KEY, secrets.randbits(_SEED_BITS) + 1,
                                       "NX"))
        bump_shared: Command = (_SHARED_KEY, ("INCR", _SHARED_KEY))
        own = generation_key(namespace)
        commands: list[Command] = [seed, (own, ("INCR", own))]
        if shared:
            commands.append(bump_shared)
        if await self._confirmed(commands) or await self._confirmed([seed, bump_shared]):
            return
        self.pending_bumps += 1
        # Acknowledged now, the write could stay unseen by an instance that already reaches
        # Redis (after a failover this one may follow the new master a moment later): keep
        # trying for up to the breaker's reset and one Redis timeout, at most
        # WRITE_PATIENCE (so a long outage costs a write that, not its time budget).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self._breaker_reset + self._timeout, WRITE_PATIENCE)
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            if await self._land_pending():
                return
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(
                self._retry_bumps(), name="tmws-cache-bump-retry")

    async def _confirmed(self, commands: Sequence[Command]) -> bool:
        """Whether ``commands`` ran and every node's replica (if it has one) confirmed."""
        confirmed: list[bool] = []
        try:
            await self._commands(*commands, wait=True, confirmed=confirmed)
        except _Unavailable:
            return False
        return all(confirmed)

    async def _land_pending(self) -> bool:
        """Bump the shared counter for every write whose own bump failed since the last
        success (one bump covers them all); whether none is pending any more."""
        pending = self.pending_bumps
        seed: Command = (_SHARED_KEY, ("SET", _SHARED_KEY, secrets.randbits(_SEED_BITS) + 1,
                                       "NX"))
        if await self._confirmed([seed, (_SHARED_KEY, ("INCR", _SHARED_KEY))]):
            self.pending_bumps -= pending
        return not self.pending_bumps

    async def _retry_bumps(self) -> None:
        # Cheap while the circuit is open (Redis is not even asked), so no backoff of its own.
        while not await self._land_pending():
            await asyncio.sleep(0.1)

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
            if self._url is None:
                return Lookup(None, None, None)
            stored = result_key(key)
            try:
                raw = await self._call(lambda t: t.client.get(stored), key=stored)
            except _Unavailable:
                return Lookup(None, None, None)
        elif self._url is None:
            generation = self._local_generation(namespace)
            raw = None
        elif self.pending_bumps and not await self._land_pending():
            # This process's own write may not be visible yet.
            return Lookup(None, None, None, cacheable=False)
        else:
            try:
                generation, raw = await self._read(namespace, result_key(key, namespace))
            except _Unavailable:
                return Lookup(None, None, None, cacheable=False)
        if namespace is not None:
            # Generations only grow: an entry from an older one is dead for good.
            local = self.local.get(kind, key, lambda entry: entry[1] == generation)
            if local is not None:
                return Lookup(local[2], "local", generation)
        if raw is None:
            if self._url is None:
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
                  generation: Generation | None = None, namespace: str | None = None) -> bool:
        """Store in both tiers with an absolute expiry ``ttl`` seconds from now (see
        :meth:`lifetime`; L1 keeps it at most ``local_ttl``); False if not cached.

        ``generation`` is the one :meth:`get` returned before the result was computed, so a
        write that raced the computation leaves the entry already stale; ``namespace`` is
        the one that lookup named (both or neither).
        """
        if (generation is None) != (namespace is None):
            raise ValueError("a result that depends on memories needs both its namespace "
                             "and the generation its lookup returned")
        if ttl <= 0:
            return False
        if len(value) > self.max_value_bytes:
            self.oversize += 1
            return False
        expires_at = time.time() + ttl
        self.local.put(kind, key, (expires_at, generation, value), min(self.local_ttl, ttl))
        if self._url is not None:
            wrapped = _wrap(expires_at, generation, value)
            stored = result_key(key, namespace)
            with contextlib.suppress(_Unavailable):
                await self._call(lambda t: t.client.set(stored, wrapped,
                                                        px=max(1, int(ttl * 1000))),
                                 key=stored)
        return True

    def _local_generation(self, namespace: str) -> Generation:
        return self._local_generations.get(namespace, 0), self._local_shared, 0

    def clear_local(self) -> None:
        self.local.clear()

    async def clear(self) -> int:
        """Drop every cached result: this process's L1 and, with Redis, every instance's L2
        entries, on every node of a Cluster (returns how many). Other processes' L1 entries
        age out within their local TTL. Memory generations are kept: they only ever grow.

        Raises :class:`RedisUnavailable` when Redis is configured but unreachable (L1 is
        cleared all the same).
        """
        self.local.clear()
        if self._url is None:
            return 0

        async def unlink_results(topology: RedisTopology) -> int:
            client = topology.client
            deleted = 0
            batch: list[bytes] = []
            # Every version's entries ("tmws:r:" and what follows it).
            async for key in client.scan_iter(match="tmws:r:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += await client.unlink(*batch)
                    batch.clear()
            if batch:
                deleted += await client.unlink(*batch)
            return deleted

        # A large keyspace takes many round trips (each within the socket timeout): the whole
        # sweep gets a budget of its own, not one call's.
        return int(await self._call(unlink_results, timeout=_CLEAR_BUDGET))

    async def ping(self) -> RedisStatus:
        """Whether Redis answers now, every node of a Cluster (not configured is a state,
        not a failure)."""
        if self._url is None:
            return RedisStatus("not configured")
        if self._topology is None:
            try:
                await self._call(_connected)
            except _Unavailable as exc:
                return _unavailable(exc)
        assert self._topology is not None
        topology = self._topology
        nodes = topology.nodes()
        def ping_node(node: str) -> Callable[[RedisTopology], Awaitable[Any]]:
            return lambda t: t.client.ping(**t.target(node))

        outcomes = await asyncio.gather(
            *(self._call(ping_node(node), node=node) for node in nodes),
            return_exceptions=True)
        failed = [(n, o) for n, o in zip(nodes, outcomes, strict=True)
                  if isinstance(o, BaseException)]
        if not failed:
            return RedisStatus("ok")
        status = _unavailable(failed[0][1])
        if len(nodes) > 1:
            return RedisStatus("unavailable",
                               f"{len(failed)} of {len(nodes)} nodes: {status.error}")
        return status

    def stats(self) -> dict[str, Any]:
        local = self.local.stats()
        lookups = self.redis_hits + self.redis_misses
        return {
            "local": local,
            "redis": {
                "configured": self._url is not None,
                "topology": self.topology,
                "hits": self.redis_hits,
                "misses": self.redis_misses,
                "hit_rate": 100.0 * self.redis_hits / lookups if lookups else 0.0,
                "errors": self.redis_errors,
                "circuit": self.circuit,
                "circuit_trips": sum(b.trips for b in self._breakers.values()),
                # Per node (a single server and a Sentinel master are the one "redis").
                "circuits": {node: b.state
                             for node, b in sorted(self._serving_breakers().items())},
                "unreplicated_writes": self.unreplicated_writes,
                "pending_bumps": self.pending_bumps,
            },
            "oversize_skipped": self.oversize,
            # What the tuning resolved to (TMWS_CACHE_TTL, TMWS_CACHE_MAX_SIZE,
            # TMWS_CACHE_LOCAL_TTL or the CacheManager's arguments).
            "tuning": {"redis_ttl": self.redis_ttl, "ttl_scale": self.redis_ttl / BASE_TTL,
                       "local_ttl": self.local_ttl, "max_local_size": self.max_local_size,
                       "size_scale": self.max_local_size / BASE_LOCAL_SIZE},
        }


async def _connected(topology: RedisTopology) -> None:
    """An operation that only needs the connection (made by ``_call``)."""


def _unavailable(exc: BaseException) -> RedisStatus:
    if exc.__cause__ is None:
        return RedisStatus("unavailable", "circuit open")
    return RedisStatus("unavailable", type(exc.__cause__).__name__)


class _Unavailable(RedisUnavailable):
    """What :meth:`CacheManager._call` raises; callers outside this module catch the base."""


# expires_at (epoch seconds), then the generation the value was computed at (-1: none).
_ENVELOPE = struct.Struct("<dqqq")


def _wrap(expires_at: float, generation: Generation | None, value: bytes) -> bytes:
    own, shared, epoch = generation if generation is not None else (-1, -1, -1)
    return _ENVELOPE.pack(expires_at, own, shared, epoch) + value


def _unwrap(raw: bytes) -> tuple[float, Generation | None, bytes]:
    expires_at, own, shared, epoch = _ENVELOPE.unpack_from(raw)
    generation = None if own < 0 else (own, shared, epoch)
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
