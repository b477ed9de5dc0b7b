"""Per-key request rate limiting: GCRA, atomically in Redis, in-process as the fallback.

The generic cell rate algorithm keeps one number per key, its *theoretical arrival time*
(TAT): when the key's budget will be fully spent down to "one request per emission
interval". With ``requests`` per ``period`` seconds, the emission interval is
``period / requests`` and the burst is ``requests``: a request at ``now`` is allowed iff
``max(TAT, now) + interval - now <= period``, and then the TAT advances by one interval.
All arithmetic is in integer microseconds (the interval rounded to a whole microsecond,
the period taken as ``interval * requests``), so exactly ``requests`` requests fit in a burst,
with no floating-point drift, in Redis and in Python alike.

With Redis the step runs in one Lua script (atomic, so the limit holds across workers and
instances sharing that Redis) on the server's clock (``TIME``), so instances with skewed
clocks agree. Keys are ``tmws:ratelimit:<blake2b-128 hex of the caller's key>`` and expire
when their TAT passes, so idle keys vanish. Without Redis, or while it is unreachable (or its
circuit open), the same step runs in-process: the limit then holds per instance only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from redis.exceptions import NoScriptError

from tmws.cache import CacheManager
from tmws.errors import RedisUnavailable

if TYPE_CHECKING:
    from tmws.config import Settings

__all__ = ["KEY_PREFIX", "RateDecision", "RateLimiter"]

logger = logging.getLogger("tmws.ratelimit")

KEY_PREFIX: Final = "tmws:ratelimit:"
_US: Final = 1_000_000
# The in-process table is swept of expired keys when it grows past this (then past twice
# what survived), so it stays proportional to the keys active within one period.
_SWEEP_MIN: Final = 1024

# KEYS[1]: the key. ARGV[1]: emission interval, ARGV[2]: interval * requests (microseconds).
# Returns {allowed (0/1), remaining, reset_after, retry_after}, times in microseconds.
# Same arithmetic as _gcra() below.
_GCRA_LUA: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > span then
  return {0, 0, tat - now, new_tat - span - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((span - (new_tat - now)) / interval), new_tat - now, 0}
"""
_GCRA_SHA: Final = hashlib.sha1(_GCRA_LUA.encode()).hexdigest()


class RateDecision(NamedTuple):
    """The answer to one :meth:`RateLimiter.hit`."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the full burst is available again
    retry_after: float  # seconds until the next request would be allowed (0 when allowed)
    backend: str  # "redis" | "local"


def _gcra(tat: int | None, now: int, interval: int, span: int
          ) -> tuple[bool, int, int, int, int]:
    """One GCRA step in integer microseconds: (allowed, TAT to store, remaining,
    reset_after, retry_after). A denied request leaves the TAT as it was."""
    if tat is None or tat < now:
        tat = now
    new_tat = tat + interval
    if new_tat - now > span:
        return False, tat, 0, tat - now, new_tat - span - now
    return True, new_tat, (span - (new_tat - now)) // interval, new_tat - now, 0


def _redis_key(key: str) -> str:
    # Keys come from client addresses and token subjects: hashed, any character is safe
    # and the Redis key has a fixed length.
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16)
    return KEY_PREFIX + digest.hexdigest()


class RateLimiter:
    """``requests`` per ``period`` seconds per key, shared through Redis when configured.

    Redis access goes through a :class:`~tmws.cache.CacheManager` — the one passed as
    ``cache`` (normally the engine's), else one of its own for ``redis_url`` — so the rate
    limiter and the result cache share one client, one timeout and one circuit breaker:
    one mechanism decides when Redis counts as down, and an outage seen by either stops
    both from waiting on it. With ``cache``, its timeout applies and ``timeout`` is unused.

    ``clock`` (seconds) drives the in-process limiter; the Redis path uses Redis' clock.
    """

    def __init__(self, requests: int, period: float, *, redis_url: str | None = None,
                 timeout: float = 5.0, cache: CacheManager | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if requests < 1:
            raise ValueError("requests must be at least 1")
        if period <= 0:
            raise ValueError("period must be positive")
        if cache is not None and redis_url is not None:
            raise ValueError("pass either cache or redis_url, not both")
        self.requests = requests
        self.period = period
        self._interval = max(1, round(period * _US / requests))
        self._span = self._interval * requests
        self._clock = clock
        self._owned: CacheManager | None = None
        if redis_url is not None:
            # No result caching here: the local tier is size 0, only the client is used.
            cache = self._owned = CacheManager(redis_url=redis_url, redis_timeout=timeout,
                                               max_local_size=0)
        self._cache = cache if cache is not None and cache.redis_configured else None
        # Per key, the TAT in microseconds of ``clock``: the in-process limiter's state, and
        # on the Redis path a lower bound of Redis' TAT (see hit()).
        self._tats: dict[str, int] = {}
        self._sweep_at = _SWEEP_MIN
        self._outage = False
        self.allowed = self.limited = self.redis_errors = self.local_fallbacks = 0
        self.outages = 0

    @classmethod
    def from_settings(cls, settings: Settings, cache: CacheManager | None = None
                      ) -> RateLimiter:
        """``TMWS_RATE_LIMIT_REQUESTS`` per ``TMWS_RATE_LIMIT_PERIOD``; pass the engine's
        cache to share its Redis client and breaker, else a client of its own is made for
        ``TMWS_REDIS_URL`` (none: in-process only)."""
        if cache is not None:
            return cls(settings.rate_limit_requests, settings.rate_limit_period, cache=cache)
        return cls(settings.rate_limit_requests, settings.rate_limit_period,
                   redis_url=settings.redis_url, timeout=settings.redis_timeout)

    def _now(self) -> int:
        return int(self._clock() * _US)

    async def hit(self, key: str) -> RateDecision:
        """Count one request for ``key`` and say whether it may proceed.

        Never raises because of Redis and never waits longer than the Redis timeout:
        on failure the in-process limiter answers.
        """
        now = self._now()
        if self._cache is not None:
            tat = self._tats.get(key)
            if tat is not None and not self._outage and tat + self._interval - now > self._span:
                # Redis' TAT for a key only grows while it matters (it expires only once
                # passed) and ours is a lower bound of it, so Redis would deny this request
                # too: answer without the round trip (a flooding client costs Redis nothing).
                # retry_after is then a lower bound if other instances also spent the budget.
                return self._decide(False, 0, tat - now,
                                    tat + self._interval - self._span - now, "redis")
            redis_key = _redis_key(key)
            try:
                allowed, remaining, reset, retry = await self._cache.run(
                    lambda client: self._evaluate(client, redis_key), key=redis_key)
            except RedisUnavailable as exc:
                self._fall_back(exc)
                now = self._now()  # the failed call may have taken up to the timeout
            else:
                if self._outage:
                    self._recover()
                # ``now`` was read before Redis read its clock, so this is never later than
                # Redis' TAT measured on our clock.
                self._remember(key, now + reset, now)
                return self._decide(bool(allowed), remaining, reset, retry, "redis")
        allowed, tat, remaining, reset, retry = _gcra(
            self._tats.get(key), now, self._interval, self._span)
        if allowed:
            self._remember(key, tat, now)
        return self._decide(allowed, remaining, reset, retry, "local")

    async def _evaluate(self, client: Any, redis_key: str) -> tuple[int, int, int, int]:
        try:
            reply = await client.evalsha(_GCRA_SHA, 1, redis_key, self._interval, self._span)
        except NoScriptError:  # first use on this server, or after SCRIPT FLUSH / a restart
            reply = await client.eval(_GCRA_LUA, 1, redis_key, self._interval, self._span)
        allowed, remaining, reset, retry = (int(value) for value in reply)
        return allowed, remaining, reset, retry

    def _decide(self, allowed: bool, remaining: int, reset_us: int, retry_us: int,
                backend: str) -> RateDecision:
        if allowed:
            self.allowed += 1
        else:
            self.limited += 1
        return RateDecision(allowed, self.requests, remaining, reset_us / _US, retry_us / _US,
                            backend)

    def _remember(self, key: str, tat: int, now: int) -> None:
        tats = self._tats
        old = tats.get(key)
        if old is None and len(tats) >= self._sweep_at:
            # A TAT in the past means the same as no entry: drop those.
            self._tats = tats = {k: t for k, t in tats.items() if t > now}
            self._sweep_at = max(_SWEEP_MIN, 2 * len(tats))
        if old is None or tat > old:
            tats[key] = tat

    def _fall_back(self, exc: RedisUnavailable) -> None:
        cause = exc.__cause__
        if cause is not None:
            self.redis_errors += 1
        self.local_fallbacks += 1
        if not self._outage:
            self._outage = True
            self.outages += 1
            reason = "circuit open" if cause is None else f"{type(cause).__name__}: {cause}"
            logger.warning("rate limiting: Redis unavailable (%s); limits are per instance "
                           "until it is back", reason)

    def _recover(self) -> None:
        self._outage = False
        # What was counted locally during the outage is not in Redis: forget it, so that
        # the shortcut in hit() only ever reflects Redis' own state.
        self._tats.clear()
        self._sweep_at = _SWEEP_MIN
        logger.info("rate limiting: Redis is back; limits are shared again")

    @staticmethod
    def headers(decision: RateDecision) -> list[tuple[bytes, bytes]]:
        """ASGI response headers for ``decision``: ``ratelimit-*`` (IETF draft) and the
        ``x-ratelimit-*`` equivalents (reset in seconds, rounded up), plus ``retry-after``
        (whole seconds, at least 1) when the request is refused."""
        limit = str(decision.limit).encode()
        remaining = str(decision.remaining).encode()
        reset = str(math.ceil(decision.reset_after)).encode()
        pairs = [(b"ratelimit-limit", limit), (b"ratelimit-remaining", remaining),
                 (b"ratelimit-reset", reset), (b"x-ratelimit-limit", limit),
                 (b"x-ratelimit-remaining", remaining), (b"x-ratelimit-reset", reset)]
        if not decision.allowed:
            pairs.append((b"retry-after", str(max(1, math.ceil(decision.retry_after))).encode()))
        return pairs

    def stats(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "limited": self.limited,
            "redis_errors": self.redis_errors,
            "local_fallbacks": self.local_fallbacks,
            "outages": self.outages,
            "backend": "redis" if self._cache is not None and not self._outage else "local",
            "keys_tracked": len(self._tats),
        }

    async def close(self) -> None:
        """Close the Redis client if this limiter made it (a passed cache is the caller's)."""
        if self._owned is not None:
            await self._owned.close()
