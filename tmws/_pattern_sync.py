"""Pattern-set changes shared over Redis: every instance on one Redis runs the same set.

A change made here (register, unregister, reload) stores the whole set under
``tmws:patterns`` and publishes ``<instance id> <fingerprint>`` on ``tmws:patterns:<db>``;
every other instance fetches the set, swaps it in and drops its local result cache.
An instance that starts later loads its pattern file: runtime registrations that must
survive a restart belong in the file too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from tmws.errors import TmwsError
from tmws.models import PatternDefinition

__all__ = ["PatternSync"]

logger = logging.getLogger("tmws.sync")

KEY = "tmws:patterns"
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[PatternDefinition])


class PatternSync:
    """Publishes local pattern-set changes and applies other instances' changes."""

    def __init__(self, redis_url: str, *, timeout: float,
                 current: Callable[[], tuple[str, list[PatternDefinition]]],
                 apply: Callable[[list[PatternDefinition]], None]) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.from_url(redis_url, socket_connect_timeout=timeout,
                                             socket_timeout=timeout)
        # Pub/sub ignores database numbers: name the database so that deployments sharing
        # one server on different databases do not hear each other.
        self._channel = f"{KEY}:{self._redis.connection_pool.connection_kwargs.get('db', 0)}"
        self._timeout = timeout
        self._current = current
        self._apply = apply
        self.instance = uuid.uuid4().hex
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.published = self.applied = self.errors = 0

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="tmws-pattern-sync")
        with contextlib.suppress(TimeoutError):  # Redis down: keep trying in the background
            await asyncio.wait_for(self._subscribed.wait(), self._timeout)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()

    async def publish(self) -> None:
        """Share this instance's current set; failures are logged, never raised."""
        fingerprint, patterns = self._current()
        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(KEY, _encoder.encode(patterns))
                    pipe.publish(self._channel, f"{self.instance} {fingerprint}")
                    await pipe.execute()
            self.published += 1
        except Exception as exc:  # Redis down: other instances miss this change
            self.errors += 1
            logger.warning("could not publish the pattern set: %s", type(exc).__name__)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: resubscribe after a pause
                self.errors += 1
                logger.warning("pattern sync lost Redis (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _on_message(self, data: bytes) -> None:
        origin, _, fingerprint = data.decode().partition(" ")
        if origin == self.instance or fingerprint == self._current()[0]:
            return
        raw = await self._redis.get(KEY)
        if raw is None:
            return
        try:
            self._apply(_decoder.decode(raw))
        except (msgspec.DecodeError, TmwsError) as exc:
            self.errors += 1
            logger.error("ignored a shared pattern set that does not load here: %s", exc)
            return
        self.applied += 1
        logger.info("applied the pattern set %s from instance %s", fingerprint, origin)
