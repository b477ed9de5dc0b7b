"""Scale-out coherence: two `tmws serve` instances of 2 workers each, on one Redis Cluster
(3 masters + 3 replicas) and one PostgreSQL primary with a streaming replica.

Memory writes and the cache invalidations they cause are seen by the other instance's very
next read; a pattern change is acknowledged once every worker of both instances runs it;
an instance killed under a write load loses no write it acknowledged. The figures each test
measures are printed (``pytest -s``) and quoted in deploy/README.md, Scaling out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.fix_redis import RedisClusterServers
from tests.fix_replica import Replication
from tests.fix_server import start_server, stop_server
from tests.loopback import process_tree


@dataclass
class Instance:
    base: str
    process: Any
    pids: list[int] = field(default_factory=list)


@pytest.fixture(params=["postgres"])
async def fleet(request: pytest.FixtureRequest, replication: Replication,
                redis_cluster: RedisClusterServers, tmp_path: Path
                ) -> AsyncIterator[list[Instance]]:
    """Two instances; ``TMWS_RECALL_INDEX`` from the parameter (indirect), and with
    ``memory`` every worker's derived index loaded before the test starts."""
    env = {"TMWS_RECALL_INDEX": request.param,"TMWS_DATABASE_URL": replication.primary_url,
           "TMWS_DATABASE_REPLICA_URLS": replication.replica_url,
           "TMWS_REDIS_URL": redis_cluster.url, "TMWS_WORKERS": "2",
           "TMWS_PATTERN_SYNC_GROUP": f"scale-out-{uuid.uuid4().hex[:8]}",
           "TMWS_PATTERN_MEMORY_TIMEOUT": "10000", "TMWS_PATTERN_INFRA_TIMEOUT": "5000",
           "TMWS_PATTERN_HYBRID_TIMEOUT": "10000"}
    instances: list[Instance] = []
    try:
        for _ in range(2):
            process, base = await asyncio.to_thread(start_server, env, tmp_path)
            instances.append(Instance(base, process))
        if request.param == "memory":
            async with httpx.AsyncClient(timeout=30) as client:
                for instance in instances:
                    await _until_index_ready(client, instance.base)
        yield instances
    finally:
        for instance in instances:
            if instance.process.poll() is None:
                await asyncio.to_thread(stop_server, instance.process)


async def _metric(client: httpx.AsyncClient, base: str, line_start: str) -> float | None:
    text = (await client.get(f"{base}/metrics")).text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _until_index_ready(client: httpx.AsyncClient, base: str) -> None:
    """Every worker of the instance answers recall from its derived index (the gauge is
    the minimum over live workers)."""
    deadline = time.monotonic() + 60
    while await _metric(client, base, "tmws_recall_index_ready ") != 1.0:
        assert time.monotonic() < deadline, "the derived recall index never became ready"
        await asyncio.sleep(0.2)


async def _recall(client: httpx.AsyncClient, base: str, namespace: str, topic: str
                  ) -> dict[str, Any]:
    response = await client.post(f"{base}/api/v1/execute", json={
        "query": f"recall memories about {topic}", "context": {"namespace": namespace}})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["pattern_name"] == "recall_memory", body
    return body


@pytest.mark.parametrize("fleet", ["postgres", "memory"], indirect=True)
async def test_writes_and_invalidations_reach_the_other_instance_at_once(
        fleet: list[Instance]) -> None:
    """Each round: the reader instance has the recall cached (both workers asked), the
    writer stores a memory, and the reader's next recall must count it: the cache entry is
    invalidated through the Cluster, and the read is not answered by a replica that has not
    replayed the write. With TMWS_RECALL_INDEX=memory the reader's workers rank in their
    derived indexes, which must have caught up with the other instance's write."""
    namespace = f"coherence-{uuid.uuid4().hex[:8]}"
    visible_after: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for round_ in range(16):
            writer, reader = fleet[round_ % 2], fleet[(round_ + 1) % 2]
            topic = f"zebra{round_}"
            fact = f"fact {round_} about {topic}"
            cached = [await _recall(client, reader.base, namespace, topic) for _ in range(4)]
            assert any(r["cache_hit"] for r in cached), "the recall was never cached"
            assert fact not in [m["content"] for m in cached[-1]["result"]["memories"]]
            stored = await client.post(f"{writer.base}/api/v1/memories", json={
                "content": fact, "namespace": namespace})
            assert stored.status_code == 201, stored.text
            acknowledged = time.perf_counter()
            seen = await _recall(client, reader.base, namespace, topic)
            visible_after.append((time.perf_counter() - acknowledged) * 1000)
            contents = [m["content"] for m in seen["result"]["memories"]]
            assert fact in contents, f"round {round_}: the write was not seen: {contents}"
            assert not seen["cache_hit"]
        stats = (await client.get(f"{fleet[0].base}/api/v1/stats")).json()
        if stats["recall_index_stats"] is not None:  # every recall ranked by an index
            for instance in fleet:
                text = (await client.get(f"{instance.base}/metrics")).text
                outcomes = {line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                            for line in text.splitlines()
                            if line.startswith("tmws_recall_index_searches_total{")}
                assert outcomes.get("index", 0) >= 8, outcomes
                assert not {k: v for k, v in outcomes.items() if k != "index" and v}, outcomes
    print(f"\nscale-out: write acknowledged -> the other instance's next recall shows it: "
          f"median {statistics.median(visible_after):.1f} ms, max {max(visible_after):.1f} ms"
          f" (that recall's own latency; no waiting)")
    assert stats["cache_stats"]["redis"]["topology"] == "cluster"


async def test_a_pattern_change_is_acknowledged_once_every_worker_runs_it(
        fleet: list[Instance]) -> None:
    name = f"coherence_probe_{uuid.uuid4().hex[:8]}"
    trigger = f"coherence probe {name[-8:]}"
    took: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for round_ in range(4):
            changer, other = fleet[round_ % 2], fleet[(round_ + 1) % 2]
            started = time.perf_counter()
            if round_ % 2 == 0:
                response = await client.post(f"{changer.base}/api/v1/patterns", json={
                    "name": name, "pattern_type": "infrastructure",
                    "trigger_pattern": trigger, "priority": 9})
                assert response.status_code == 201, response.text
            else:
                response = await client.delete(f"{changer.base}/api/v1/patterns/{name}")
                assert response.status_code == 200, response.text
            took.append((time.perf_counter() - started) * 1000)
            assert response.headers["x-pattern-set-instances"] == "4/4"
            assert response.headers["x-pattern-set-visible-everywhere"] == "true"
            for target in (other, changer):  # both workers of each, whichever answers
                for _ in range(6):
                    routed = await client.post(f"{target.base}/api/v1/route",
                                               json={"query": f"please run the {trigger}"})
                    assert routed.status_code == 200, routed.text
                    chosen = routed.json().get("pattern_name")
                    assert (chosen == name) == (round_ % 2 == 0), routed.json()
    print(f"\nscale-out: pattern change acknowledged by all 4 workers in median "
          f"{statistics.median(took):.0f} ms, max {max(took):.0f} ms")


def _kill(instance: Instance) -> None:
    for pid in reversed(process_tree(instance.process.pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    instance.process.wait()


async def test_killing_an_instance_under_load_loses_no_acknowledged_write(
        fleet: list[Instance], replication: Replication) -> None:
    namespace = f"durable-{uuid.uuid4().hex[:8]}"
    acknowledged: list[tuple[str, float]] = []
    failed = {"transport": 0, "status": 0}
    stop = asyncio.Event()
    killed_at: list[float] = []

    async def writer(number: int) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            sequence = 0
            while not stop.is_set():
                target = fleet[number % 2] if not killed_at else fleet[1]
                content = f"durable write {number}-{sequence}"
                sequence += 1
                try:
                    response = await client.post(f"{target.base}/api/v1/memories", json={
                        "content": content, "namespace": namespace})
                except httpx.TransportError:
                    failed["transport"] += 1  # not acknowledged: may or may not be stored
                    continue
                if response.status_code == 201:
                    acknowledged.append((content, time.monotonic()))
                else:
                    failed["status"] += 1

    writers = [asyncio.create_task(writer(n)) for n in range(6)]
    await asyncio.sleep(2.0)
    await asyncio.to_thread(_kill, fleet[0])
    killed_at.append(time.monotonic())
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*writers)

    with psycopg.connect(replication.primary_url) as conn:
        stored = {row[0] for row in conn.execute(
            "SELECT content FROM memories WHERE namespace = %s", (namespace,))}
    lost = [content for content, _ in acknowledged if content not in stored]
    after_kill = sum(1 for _, at in acknowledged if at > killed_at[0])
    print(f"\nscale-out: {len(acknowledged)} writes acknowledged ({after_kill} after the kill), "
          f"{failed['transport']} cut off by the kill, {failed['status']} refused; "
          f"{len(lost)} acknowledged writes missing")
    assert not lost, f"acknowledged writes lost: {lost[:5]}"
    assert after_kill > 0, "the surviving instance acknowledged nothing after the kill"
    async with httpx.AsyncClient(timeout=30) as client:  # and it reads them all back
        listed = await client.post(f"{fleet[1].base}/api/v1/memories/search", json={
            "namespace": namespace, "limit": 100})
        assert listed.status_code == 200, listed.text
        newest = {m["content"] for m in listed.json()["results"]}
    assert newest <= stored and len(newest) == min(100, len(stored))
