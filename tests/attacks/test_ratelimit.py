"""A flood from one namespace is limited; the others do not notice."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.fix_server import ARMOURED_RATE_LIMIT, Served


def test_one_namespace_flooding_is_limited_alone(armoured: Served) -> None:
    flooder = armoured.headers(f"flood-{uuid.uuid4().hex[:8]}", "execute")
    bystander = armoured.headers(f"calm-{uuid.uuid4().hex[:8]}", "execute")
    limited = None
    with httpx.Client(base_url=armoured.base, timeout=10) as client:
        # The bucket refills while the flood runs (one request per 60 ms), so a slow machine
        # needs more than the burst to empty it: bound the flood generously, not tightly.
        for _ in range(4 * ARMOURED_RATE_LIMIT):
            response = client.get("/api/v1/patterns/none-such", headers=flooder)
            if response.status_code == 429:
                limited = response
                break
            assert response.status_code == 404, response.text
        assert limited is not None, "never limited"
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        calm = client.post("/api/v1/execute", json={"query": "check health"},
                           headers=bystander)
        assert calm.status_code == 200, calm.text
    # Both workers share the limit (in Redis): a flood over new connections, which land on
    # either worker, gets no more than the refill (one request per 60 ms) over its duration;
    # a per-worker limit would let the other worker's full bucket through.
    fresh = httpx.Limits(max_keepalive_connections=0)
    interval = 60 / ARMOURED_RATE_LIMIT
    with httpx.Client(base_url=armoured.base, timeout=10, limits=fresh) as client:
        started = time.monotonic()
        statuses = [client.get("/api/v1/patterns/none-such", headers=flooder).status_code
                    for _ in range(40)]
        elapsed = time.monotonic() - started
    assert set(statuses) <= {404, 429}, statuses
    assert statuses.count(404) <= elapsed / interval + 2, (elapsed, statuses)
