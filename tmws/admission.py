"""Admission control in front of the database: refuse early rather than queue work that
cannot finish in time.

Executions that read or write memories (and the memory routes) hold one of ``limit``
slots while they run. Without a free slot, a request waits in its pattern type's queue
(bounded) only if it can still finish within its deadline and the queue is short (two hold
times): the wait is estimated from the queue ahead of it and the recent time a slot is
held for that work (an exponentially weighted mean per handler), and a request that would
miss its deadline is refused at once with :class:`~tmws.errors.OverloadedError` (HTTP 503
and ``Retry-After``). A waiter whose deadline becomes unreachable leaves the queue the moment
it does. Each kind's queue is first come, first served (its requests share one budget); a
freed slot goes to the head with the earliest deadline.

The limit adapts, as TCP Vegas does: with holds ``r`` times as long as unloaded (each
work's fastest recent hold), about ``limit * (1 - 1/r)`` of the slots are only queueing
inside the database. After each round of ``limit`` completions the limit shrinks by one when
that estimate is above 4, and grows by one, up to ``max_limit``
(TMWS_ADMISSION_CONCURRENCY), when it is below 2 and requests had to wait. Concurrency past
the database's capacity only lengthens every query; fewer slots give the same throughput
with shorter holds, so more requests fit their budget.

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
_MIN_LIMIT: Final = 2  # one query running, one on its way: enough to keep a database busy
_GROW_BELOW: Final = 2.0  # slots estimated to be queueing inside the database
_SHRINK_ABOVE: Final = 4.0
# The fastest hold drifts up by this share per sample, so one lucky sample cannot pin it
# and a database that got slower for good is learnt within seconds.
_BASELINE_DRIFT: Final = 2e-4
# A queue longer than this many hold times adds latency without adding throughput (a freed
# slot finds a waiter either way); measured, waiting up to half the budget instead let more
# admitted requests run past it (504s) and lowered goodput (bench/README.md, Overload).
_QUEUE_ROUNDS: Final = 2.0


class _Waiter:
    __slots__ = ("deadline", "future", "kind", "need")

    def __init__(self, kind: str, deadline: float, need: float,
                 future: asyncio.Future[None]) -> None:
        self.kind = kind
        self.deadline = deadline
        self.need = need  # expected hold time: the slot is useless later than deadline - need
        self.future = future


class Admission:
    """Between ``min(2, max_limit)`` and ``max_limit`` concurrent slots (adaptive), with
    per-kind queues of at most ``max_queue`` waiters."""

    def __init__(self, max_limit: int, max_queue: int, *, adaptive: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_limit < 1 or max_queue < 0:
            raise ValueError("max_limit must be at least 1 and max_queue 0 or more")
        self.max_limit = self.limit = max_limit
        self.max_queue = max_queue
        self.adaptive = adaptive
        self._clock = clock
        self._busy = 0
        self._queues: dict[str, deque[_Waiter]] = {}
        self._hold: dict[str, float] = {}  # per work: moving mean of the hold time
        self._fastest: dict[str, float] = {}  # per work: the (drifting) fastest hold
        self._pressure = 1.0  # moving mean of hold / fastest
        self._round = 0
        self._contended = False  # a request waited or was refused this round
        self.admitted = self.queued = self.refused = self.expired = 0

    @asynccontextmanager
    async def slot(self, kind: str, deadline: float, work: str | None = None
                   ) -> AsyncIterator[None]:
        """Hold a slot for the block; OverloadedError (nothing has run) if one cannot be had
        in time. ``deadline`` is on the ``clock``'s scale (``time.monotonic``); ``work``
        names what will be done (the handler; default ``kind``), whose recent hold times
        estimate how long the slot will be needed."""
        work = work or kind
        need = self._hold.get(work, _INITIAL_HOLD)
        if self._busy < self.limit and not self._waiting():
            self._busy += 1
        else:
            await self._wait(kind, deadline, need)
        self.admitted += 1
        started = self._clock()
        try:
            yield
        except BaseException:
            raise  # a failed or cancelled hold says nothing about the database's pace
        else:
            self._learn(work, self._clock() - started, need)
        finally:
            self._busy -= 1
            self._hand_over()

    def _learn(self, work: str, held: float, mean: float) -> None:
        self._hold[work] = mean + _WEIGHT * (held - mean)
        fastest = min(held, self._fastest.get(work, held) * (1 + _BASELINE_DRIFT))
        self._fastest[work] = fastest
        self._pressure += _WEIGHT * (held / max(fastest, 1e-6) - self._pressure)
        if not self.adaptive:
            return
        self._round += 1
        if self._round < self.limit:
            return
        self._round = 0
        queueing = self.limit * (1 - 1 / max(self._pressure, 1.0))
        if queueing > _SHRINK_ABOVE and self.limit > min(_MIN_LIMIT, self.max_limit):
            self.limit -= 1
        elif queueing < _GROW_BELOW and self._contended and self.limit < self.max_limit:
            self.limit += 1
            self._hand_over()
        self._contended = False

    def _waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def _mean_hold(self) -> float:
        return (sum(self._hold.values()) / len(self._hold)) if self._hold else _INITIAL_HOLD

    def expected_wait(self) -> float:
        """Seconds until a request arriving now would get a slot (an estimate)."""
        ahead = self._waiting() + max(0, self._busy - self.limit + 1)
        return ahead * self._mean_hold() / self.limit

    def refusal(self, kind: str, deadline: float, work: str | None = None
                ) -> OverloadedError | None:
        """What :meth:`slot` would refuse a request arriving now with (counted as refused),
        or None: lets a caller refuse before doing any other work for the request."""
        if self._busy < self.limit and not self._waiting():
            return None
        refused = self._judge(kind, deadline, self._hold.get(work or kind, _INITIAL_HOLD))
        if refused is not None:
            self.refused += 1
            self._contended = True
        return refused

    def _judge(self, kind: str, deadline: float, need: float) -> OverloadedError | None:
        queue = self._queues.get(kind, ())
        wait = (self._waiting() + 1) * self._mean_hold() / self.limit
        if len(queue) >= self.max_queue:
            return self._overloaded(
                f"{len(queue)} {kind} requests are already waiting for the database "
                f"(TMWS_ADMISSION_QUEUE)", wait)
        now = self._clock()
        if wait > _QUEUE_ROUNDS * self._mean_hold() or now + wait + need > deadline:
            return self._overloaded(
                f"the database is busy: a {kind} request would wait about {wait * 1000:.0f} ms "
                f"and could not finish within its {max(0.0, deadline - now) * 1000:.0f} ms "
                "budget", wait)
        return None

    async def _wait(self, kind: str, deadline: float, need: float) -> None:
        self._contended = True
        refused = self._judge(kind, deadline, need)
        if refused is not None:
            self.refused += 1
            raise refused
        queue = self._queues.setdefault(kind, deque())
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
        return {"limit": self.limit, "max_limit": self.max_limit, "adaptive": self.adaptive,
                "busy": self._busy, "waiting": self._waiting(), "max_queue": self.max_queue,
                "admitted": self.admitted, "queued": self.queued, "refused": self.refused,
                "expired": self.expired, "pressure": round(self._pressure, 3),
                "hold_ms": {work: round(seconds * 1000, 3)
                            for work, seconds in self._hold.items()}}
