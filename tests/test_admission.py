"""Admission control (tmws.admission): refuse early what cannot finish in time."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from tests.conftest import ApiFactory, make_settings
from tmws.admission import Admission
from tmws.engine import create_pattern_execution_engine
from tmws.errors import OverloadedError
from tmws.handlers import HandlerContext
from tmws.models import PatternDefinition, PatternType


def soon(seconds: float) -> float:
    return time.monotonic() + seconds


async def hold(admission: Admission, release: asyncio.Event, kind: str = "memory",
               budget: float = 5.0) -> None:
    async with admission.slot(kind, soon(budget)):
        await release.wait()


async def test_free_slots_are_taken_at_once_and_given_back() -> None:
    admission = Admission(2, 4, adaptive=False)
    release = asyncio.Event()
    holders = [asyncio.create_task(hold(admission, release)) for _ in range(2)]
    await asyncio.sleep(0)
    assert admission.stats()["busy"] == 2
    release.set()
    await asyncio.gather(*holders)
    assert admission.stats()["busy"] == 0 and admission.stats()["admitted"] == 2


async def test_a_waiter_gets_the_next_free_slot() -> None:
    admission = Admission(1, 4, adaptive=False)
    release = asyncio.Event()
    first = asyncio.create_task(hold(admission, release))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold(admission, asyncio.Event(), budget=5.0))
    await asyncio.sleep(0.01)
    assert admission.stats()["waiting"] == 1
    release.set()
    await first
    await asyncio.sleep(0.01)
    assert admission.stats()["busy"] == 1 and admission.stats()["waiting"] == 0
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert admission.stats()["busy"] == 0  # a cancelled holder gives its slot back


async def test_a_request_that_cannot_finish_in_time_is_refused_at_once() -> None:
    admission = Admission(1, 4, adaptive=False)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(admission, release))
    await asyncio.sleep(0)
    # The hold estimate starts at 5 ms: a 1 ms budget cannot wait for it.
    started = time.monotonic()
    with pytest.raises(OverloadedError, match="could not finish") as refused:
        async with admission.slot("memory", soon(0.001)):
            raise AssertionError("admitted")
    assert time.monotonic() - started < 0.5  # at once, not at the deadline
    assert refused.value.retry_after >= 1
    assert admission.refusal("memory", soon(0.001)) is not None
    assert admission.refusal("memory", soon(5.0)) is None
    release.set()
    await holder
    assert admission.stats()["refused"] == 2 and admission.stats()["busy"] == 0


async def test_the_queue_is_bounded_per_kind() -> None:
    admission = Admission(1, 1, adaptive=False)
    release = asyncio.Event()
    tasks = [asyncio.create_task(hold(admission, release, "memory")) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(OverloadedError, match="TMWS_ADMISSION_QUEUE"):
        async with admission.slot("memory", soon(5.0)):
            pass
    other = asyncio.create_task(hold(admission, release, "hybrid"))  # its own queue
    await asyncio.sleep(0.01)
    assert admission.stats()["waiting"] == 2
    release.set()
    await asyncio.gather(*tasks, other)
    assert admission.stats()["busy"] == 0


async def test_a_waiter_whose_deadline_becomes_unreachable_leaves_and_leaks_nothing() -> None:
    admission = Admission(1, 4, adaptive=False)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(admission, release))
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError, match="stayed busy"):
        async with admission.slot("memory", soon(0.1)):
            raise AssertionError("admitted")
    assert admission.stats()["expired"] == 1 and admission.stats()["waiting"] == 0
    release.set()
    await holder
    assert admission.stats()["busy"] == 0


async def test_the_earliest_deadline_among_the_kinds_is_served_first() -> None:
    """Each kind's queue is first come, first served (its requests share one budget); a
    freed slot goes to the head whose deadline is nearest."""
    admission = Admission(1, 4, adaptive=False)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(admission, release))
    await asyncio.sleep(0)
    order: list[str] = []

    async def wait(name: str, kind: str, budget: float) -> None:
        async with admission.slot(kind, soon(budget)):
            order.append(name)

    late = asyncio.create_task(wait("late", "hybrid", 10.0))
    await asyncio.sleep(0.01)
    early = asyncio.create_task(wait("early", "memory", 2.0))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(holder, late, early)
    assert order == ["early", "late"]


async def test_the_limit_shrinks_when_holds_queue_inside_the_database() -> None:
    admission = Admission(8, 100)
    assert admission.limit == 8

    async def work(seconds: float) -> None:
        async with admission.slot("memory", soon(10.0), "recall"):
            await asyncio.sleep(seconds)

    for _ in range(16):  # unloaded: the baseline
        await work(0.001)
    for _ in range(6):  # then every hold is 20 times as long: mostly waiting in line
        await asyncio.gather(*(work(0.02) for _ in range(admission.limit)))
    assert 2 <= admission.limit < 8, admission.stats()


async def test_overload_is_refused_not_timed_out(database_url: str) -> None:
    """Finding 8: queued for the pool until every budget was gone, 96-100% of memory
    requests answered 504 and none succeeded. Admitted requests now finish; the rest are
    refused at once with a retry hint."""
    settings = make_settings(database_url, admission_concurrency="1", admission_queue="1",
                             pattern_memory_timeout="400")
    async with await create_pattern_execution_engine(settings) as engine:
        async def slow_recall(ctx: HandlerContext) -> dict[str, int]:
            await asyncio.sleep(0.1)
            return {"count": 0}

        engine.bind_handler("slow_recall", slow_recall, reads_memory=True)
        await engine.register_pattern(PatternDefinition(
            name="slow_recall", pattern_type=PatternType.MEMORY,
            trigger_pattern=r"\bslow recall\b", cache_ttl=0))
        results = await asyncio.gather(*(engine.execute(f"slow recall {i}")
                                         for i in range(10)))
        codes = Counter(r.error_code if not r.success else "ok" for r in results)
        assert codes["ok"] >= 1 and codes["overloaded"] >= 5, codes
        assert set(codes) <= {"ok", "overloaded"}, codes
        for result in results:
            if result.error_code == "overloaded":
                assert result.metadata["retry_after"] >= 1
                assert result.execution_time_ms < 100  # refused at once
        stats = engine.get_stats()["admission_stats"]
        assert stats["refused"] >= 5 and stats["busy"] == 0


async def test_overloaded_is_503_with_retry_after_over_http(make_api: ApiFactory) -> None:
    async with make_api(admission_concurrency="1", admission_queue="1") as (api, engine):
        gate = asyncio.Event()

        async def blocked(ctx: HandlerContext) -> str:
            await gate.wait()
            return "done"

        engine.bind_handler("blocked", blocked, reads_memory=True)
        await engine.register_pattern(PatternDefinition(
            name="blocked", pattern_type=PatternType.MEMORY, trigger_pattern=r"\bblocked\b",
            cache_ttl=0))
        first = asyncio.create_task(api.post("/api/v1/execute", json={"query": "blocked a"}))
        second = asyncio.create_task(api.post("/api/v1/execute", json={"query": "blocked b"}))
        await asyncio.sleep(0.05)
        refused = await api.post("/api/v1/execute", json={"query": "blocked c"})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["retry-after"]) >= 1
        gate.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
