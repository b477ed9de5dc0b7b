"""A flood from one namespace is limited; the others do not notice."""

from __future__ import annotations

import uuid

import httpx

from tests.fix_server import ARMOURED_RATE_LIMIT, Served


def test_one_namespace_flooding_is_limited_alone(armoured: Served) -> None:
    flooder = armoured.headers(f"flood-{uuid.uuid4().hex[:8]}", "execute")
    bystander = armoured.headers(f"calm-{uuid.uuid4().hex[:8]}", "execute")
    limited = None
    with httpx.Client(base_url=armoured.base, timeout=10) as client:
        for _ in range(ARMOURED_RATE_LIMIT + 50):
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
    # either worker, stays limited to the rate (one request per 60 ms refills).
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=armoured.base, timeout=10, limits=fresh) as client:
        statuses = [client.get("/api/v1/patterns/none-such", headers=flooder).status_code
                    for _ in range(40)]
    assert statuses.count(429) >= 20, statuses
