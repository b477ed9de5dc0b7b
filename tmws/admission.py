"""Admission control in front of the database: refuse early rather than queue work that
cannot finish in time.

Executions that read or write memories (and the memory routes) hold one of ``limit``
slots while they run — as many as the pool has connections, so a slot holder rarely waits
for one. Without a free slot, a request waits in its pattern type's queue (bounded) only if
it can still finish within its deadline: the wait is estimated from the queue ahead of it
and the recent time a slot is held (an exponentially weighted mean per type), and a request
that would miss its deadline is refused at once with :class:`~tmws.errors.OverloadedError`
(HTTP 503 and ``Retry-After``). A waiter whose deadline becomes unreachable leaves the queue
the moment it does. Freed slots go to the waiter with the earliest deadline.

Queueing for a pool that cannot serve in time wastes the work of every request in the
queue: under overload all of them time out and goodput falls to zero (congestion collapse).
Refusing the excess keeps the admitted ones fast; ``bench/overload.py`` measures it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

from tmws.errors import OverloadedError

__all__ = ["Admission"]

_INITIAL_HOLD: Final = 0.005  # seconds a slot is assumed to be held before any is measured
_WEIGHT: Final = 0.1  # of the newest sample in the moving mean


class _Waiter:
    __slots__ = ("deadline", "future", "kind", "need")

    def __init__(self, kind: str, deadline: float, need: float,
                 future: asyncio.Future[None]) -> None:
        self.kind = kind
        self.deadline = deadline
        self.need = need  # expected hold time: the slot is useless later than deadline - need
        self.future = future


class Admission:
    """``limit`` concurrent slots, with per-kind queues of at most ``max_queue`` waiters."""

    def __init__(self, limit: int, max_queue: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or max_queue < 0:
            raise ValueError("limit must be at least 1 and max_queue 0 or more")
        self.limit = limit
        self.max_queue = max_queue
        self._clock = clock
        self._busy = 0
        self._queues: dict[str, deque[_Waiter]] = {}
        self._hold: dict[str, float] = {}
        self.admitted = self.queued = self.refused = self.expired = 0

    @asynccontextmanager
    async def slot(self, kind: str, deadline: float) -> AsyncIterator[None]:
        """Hold a slot for the block; OverloadedError (nothing has run) if one cannot be had
        in time. ``deadline`` is on the ``clock``'s scale (``time.monotonic``)."""
        need = self._hold.get(kind, _INITIAL_HOLD)
        if self._busy < self.limit and not self._waiting():
            self._busy += 1
        else:
            await self._wait(kind, deadline, need)
        self.admitted += 1
        started = self._clock()
        try:
            yield
        finally:
            held = self._clock() - started
            self._hold[kind] = need + _WEIGHT * (held - need)
            self._busy -= 1
            self._hand_over()

    def _waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def _mean_hold(self) -> float:
        return (sum(self._hold.values()) / len(self._hold)) if self._hold else _INITIAL_HOLD

    def expected_wait(self) -> float:
        """Seconds until a request arriving now would get a slot (an estimate)."""
        ahead = self._waiting() + max(0, self._busy - self.limit + 1)
        return ahead * self._mean_hold() / self.limit

    async def _wait(self, kind: str, deadline: float, need: float) -> None:
        now = self._clock()
        queue = self._queues.setdefault(kind, deque())
        wait = (self._waiting() + 1) * self._mean_hold() / self.limit
        if len(queue) >= self.max_queue:
            self.refused += 1
            raise self._overloaded(
                f"{len(queue)} {kind} requests are already waiting for the database "
                f"(TMWS_ADMISSION_QUEUE)", wait)
        if now + wait + need > deadline:
            self.refused += 1
            raise self._overloaded(
                f"the database is busy: a {kind} request would wait about {wait * 1000:.0f} ms "
                f"and could not finish within its {max(0.0, deadline - now) * 1000:.0f} ms "
                "budget", wait)
        waiter = _Waiter(kind, deadline, need, asyncio.get_running_loop().create_future())
        queue.append(waiter)
        self.queued += 1
        try:
            async with asyncio.timeout_at(deadline - need):
                await waiter.future
        except TimeoutError:
            self._give_back(waiter)
            self.expired += 1
            raise self._overloaded(
                f"the database stayed busy: no slot came free in time for this {kind} "
                "request", self.expected_wait()) from None
        except BaseException:  # cancelled, or refused by _hand_over
            self._give_back(waiter)
            raise
        finally:
            if waiter in queue:
                queue.remove(waiter)

    def _give_back(self, waiter: _Waiter) -> None:
        """A slot handed to a waiter that gave up at the same moment goes to the next."""
        future = waiter.future
        if future.done() and not future.cancelled() and future.exception() is None:
            self._busy -= 1
            self._hand_over()

    def _hand_over(self) -> None:
        """Give free slots to the waiters with the earliest deadlines that can still make
        them; the others are refused now rather than when their time is up."""
        now = self._clock()
        while self._busy < self.limit:
            best: _Waiter | None = None
            for queue in self._queues.values():
                while queue and (queue[0].future.done()
                                 or now + queue[0].need > queue[0].deadline):
                    stale = queue.popleft()
                    if not stale.future.done():
                        self.expired += 1
                        stale.future.set_exception(self._overloaded(
                            f"the database stayed busy: no slot came free in time for this "
                            f"{stale.kind} request", self.expected_wait()))
                if queue and (best is None or queue[0].deadline < best.deadline):
                    best = queue[0]
            if best is None:
                return
            self._queues[best.kind].popleft()
            self._busy += 1
            best.future.set_result(None)

    @staticmethod
    def _overloaded(reason: str, wait: float) -> OverloadedError:
        return OverloadedError(f"overloaded: {reason}; retry shortly",
                               retry_after=max(1, math.ceil(wait)))

    def stats(self) -> dict[str, Any]:
        return {"limit": self.limit, "busy": self._busy, "waiting": self._waiting(),
                "max_queue": self.max_queue, "admitted": self.admitted, "queued": self.queued,
                "refused": self.refused, "expired": self.expired,
                "hold_ms": {kind: round(seconds * 1000, 3)
                            for kind, seconds in self._hold.items()}}
