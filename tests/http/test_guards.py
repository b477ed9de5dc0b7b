"""Authentication, scopes, namespaces and rate limits, through the ASGI app with a real
engine and (for the shared limit) a real Redis."""

from __future__ import annotations

import base64
import json
import time

from tests.conftest import SECRET, ApiFactory
from tmws.auth import TokenAuthority

AUTHORITY = TokenAuthority(SECRET, 60)


def bearer(namespace: str, *scopes: str) -> dict[str, str]:
    return {"authorization": f"Bearer {AUTHORITY.create(namespace, scopes)}"}


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_tokens_are_required_and_checked(make_api: ApiFactory) -> None:
    async with make_api(auth_enabled="true") as (api, _):
        execute = {"query": "check health"}
        missing = await api.post("/api/v1/execute", json=execute)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "token_missing"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        good = bearer("team-a", "execute")
        assert (await api.post("/api/v1/execute", json=execute, headers=good)).status_code == 200

        token = good["authorization"].removeprefix("Bearer ")
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        forged = {**claims, "sub": "team-b"}
        tampered = f"{header}.{_b64(forged)}.{signature}"
        none_alg = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(forged)}."
        expired = AUTHORITY.create("team-a", ["execute"], expires_minutes=1)
        expired_authority = TokenAuthority(SECRET, 60, clock=lambda: time.time() - 3600)
        expired = expired_authority.create("team-a", ["execute"], expires_minutes=1)
        for bad, code in ((tampered, "token_invalid"), (none_alg, "token_algorithm"),
                          (expired, "token_expired"), ("not-a-jwt", "token_invalid")):
            response = await api.post("/api/v1/execute", json=execute,
                                      headers={"authorization": f"Bearer {bad}"})
            assert response.status_code == 401, bad
            assert response.json()["error"]["code"] == code
            assert bad not in response.text and SECRET not in response.text
        basic = await api.post("/api/v1/execute", json=execute,
                               headers={"authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 401


async def test_scopes(make_api: ApiFactory) -> None:
    async with make_api(auth_enabled="true") as (api, _):
        reader = bearer("team-a", "execute", "memories:read")
        denied = await api.post("/api/v1/memories", json={"content": "x"}, headers=reader)
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "insufficient_scope"
        assert "memories:write" in denied.json()["error"]["message"]
        pattern = {"name": "p1", "pattern_type": "infrastructure", "trigger_pattern": "p1"}
        assert (await api.post("/api/v1/patterns", json=pattern,
                               headers=reader)).status_code == 403
        admin = bearer("ops", "patterns:admin")
        assert (await api.post("/api/v1/patterns", json=pattern,
                               headers=admin)).status_code == 201
        assert (await api.get("/api/v1/stats", headers=reader)).status_code == 403
        assert (await api.get("/api/v1/stats",
                              headers=bearer("ops", "metrics:read"))).status_code == 200
        # Probes and metrics stay open; the detailed health and the API description need a
        # token.
        assert (await api.get("/health")).status_code == 200
        assert (await api.get("/metrics")).status_code == 200
        assert (await api.get("/health/ready")).status_code == 200
        assert (await api.get("/api/v1/health")).status_code == 401
        assert (await api.get("/openapi.json", headers=reader)).status_code == 200


async def test_metrics_can_require_a_token(make_api: ApiFactory) -> None:
    async with make_api(auth_enabled="true", metrics_require_token="true") as (api, _):
        assert (await api.get("/metrics")).status_code == 401
        assert (await api.get("/metrics", headers=bearer("ops", "execute"))).status_code == 403
        assert (await api.get("/metrics",
                              headers=bearer("ops", "metrics:read"))).status_code == 200


async def test_namespace_is_the_token_subject(make_api: ApiFactory) -> None:
    async with make_api(auth_enabled="true") as (api, _):
        alice = bearer("alice", "execute", "memories:read", "memories:write")
        bob = bearer("bob", "execute", "memories:read", "memories:write")
        created = await api.post("/api/v1/memories", headers=alice,
                                 json={"content": "alice's launch codes are in the vault"})
        assert created.status_code == 201 and created.json()["namespace"] == "alice"
        memory_id = created.json()["id"]
        assert (await api.get(f"/api/v1/memories/{memory_id}", headers=bob)).status_code == 404
        assert (await api.get(f"/api/v1/memories/{memory_id}",
                              headers=alice)).status_code == 200
        spoof = await api.post("/api/v1/memories/search", headers=bob,
                               json={"query": "launch codes", "namespace": "alice"})
        assert spoof.status_code == 403
        assert spoof.json()["error"]["code"] == "namespace_forbidden"
        via_execute = await api.post("/api/v1/execute", headers=bob, json={
            "query": "recall memories about launch codes", "context": {"namespace": "alice"}})
        assert via_execute.status_code == 403
        # Through the result cache too: alice's cached answer is not bob's.
        query = {"query": "recall memories about launch codes"}
        first = await api.post("/api/v1/execute", headers=alice, json=query)
        assert "vault" in first.text
        second = await api.post("/api/v1/execute", headers=bob, json=query)
        assert second.status_code == 200 and "vault" not in second.text
        assert (await api.delete(f"/api/v1/memories/{memory_id}",
                                 headers=bob)).status_code == 404


async def test_rate_limit_per_subject(make_api: ApiFactory, redis_url: str) -> None:
    async with make_api(auth_enabled="true", rate_limit_enabled="true",
                        rate_limit_requests="3", rate_limit_period="60",
                        redis_url=redis_url) as (api, _):
        carol = bearer(f"carol-{time.time_ns()}", "execute")
        dave = bearer(f"dave-{time.time_ns()}", "execute")
        statuses = []
        for _ in range(4):
            response = await api.post("/api/v1/route", json={"query": "check health"},
                                      headers=carol)
            statuses.append(response.status_code)
        assert statuses == [200, 200, 200, 429]
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["ratelimit-limit"] == "3"
        assert response.headers["ratelimit-remaining"] == "0"
        assert response.json()["error"]["code"] == "rate_limited"
        other = await api.post("/api/v1/route", json={"query": "check health"}, headers=dave)
        assert other.status_code == 200 and other.headers["ratelimit-remaining"] == "2"
        assert (await api.get("/health")).status_code == 200  # never limited


async def test_rate_limit_by_address_without_auth(make_api: ApiFactory) -> None:
    async with make_api(rate_limit_enabled="true", rate_limit_requests="2") as (api, _):
        codes = [(await api.get("/api/v1/patterns")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]


async def test_executing_memory_patterns_needs_memory_scopes(make_api: ApiFactory) -> None:
    async with make_api(auth_enabled="true") as (api, _):
        tools_only = bearer("erin", "execute")
        assert (await api.post("/api/v1/execute", json={"query": "check health"},
                               headers=tools_only)).status_code == 200
        recall = await api.post("/api/v1/execute", headers=tools_only,
                                json={"query": "recall memories about auth"})
        assert recall.status_code == 403 and "memories:read" in recall.text
        reader = bearer("erin", "execute", "memories:read")
        assert (await api.post("/api/v1/execute", headers=reader,
                               json={"query": "recall memories about auth"})).status_code == 200
        store = await api.post("/api/v1/execute", headers=reader,
                               json={"query": "store memory: the deploy key moved"})
        assert store.status_code == 403 and "memories:write" in store.text
        comprehensive = await api.post("/api/v1/execute", headers=tools_only, json={
            "query": "check health", "execution_mode": "comprehensive"})
        assert comprehensive.status_code == 403
