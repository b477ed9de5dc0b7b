"""Liveness, readiness, statistics, metrics access and the generated OpenAPI document."""

from __future__ import annotations

import httpx

from tests.conftest import SECRET, ApiFactory, PrivateRedis
from tmws.auth import TokenAuthority
from tmws.routes import ROUTES


async def test_health_and_ready(api: httpx.AsyncClient) -> None:
    assert (await api.get("/health")).json()["status"] == "ok"
    ready = await api.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"pattern_engine": True, "database": True, "redis": True,
                            "healthy": True}


async def test_ready_is_503_when_redis_is_down(make_api: ApiFactory) -> None:
    async with make_api(redis_url="redis://127.0.0.1:1/0", redis_timeout="0.2") as (api, _):
        ready = await api.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["healthy"] is False and "redis_error" in ready.json()


async def test_stats_include_this_workers_pool(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/execute", json={"query": "recall memories about auth"})
    pool = (await api.get("/api/v1/stats")).json()["database_stats"]
    assert pool["name"] == "tmws" and pool["queries"] >= 1
    assert pool["in_use"] + pool["idle"] == pool["size"] <= pool["max_size"]


async def test_cache_clear_needs_admin_and_drops_cached_results(
        make_api: ApiFactory, private_redis: PrivateRedis) -> None:
    authority = TokenAuthority(SECRET, 60)
    admin = {"authorization": f"Bearer {authority.create('ops', ['patterns:admin'])}"}
    caller = {"authorization": f"Bearer {authority.create('ops', ['execute'])}"}
    query = {"query": "run tool lint"}
    async with make_api(auth_enabled="true", redis_url=private_redis.url) as (api, _):
        await api.post("/api/v1/execute", json=query, headers=caller)
        cached = await api.post("/api/v1/execute", json=query, headers=caller)
        assert cached.json()["cache_hit"] is True
        denied = await api.post("/api/v1/cache/clear", headers=caller)
        assert denied.status_code == 403
        cleared = await api.post("/api/v1/cache/clear", headers=admin)
        assert cleared.status_code == 200, cleared.text
        assert cleared.json() == {"redis_deleted": 1, "local_ttl_seconds": 60}
        again = await api.post("/api/v1/execute", json=query, headers=caller)
        assert again.json()["cache_hit"] is False
        private_redis.stop()
        down = await api.post("/api/v1/cache/clear", headers=admin)
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "redis_unavailable"


async def test_openapi_lists_every_route(api: httpx.AsyncClient) -> None:
    document = (await api.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    for route in ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        assert str(route.status) in operation["responses"]
    execute = document["paths"]["/api/v1/execute"]["post"]
    body = execute["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ExecuteRequest"}
    schema = document["components"]["schemas"]["ExecuteRequest"]
    assert schema["required"] == ["query"] and schema["additionalProperties"] is False
    assert {"401", "403", "429", "504"} <= set(execute["responses"])


async def test_metrics_restricted_by_network(make_api: ApiFactory) -> None:
    async with make_api(metrics_allowed_networks="10.0.0.0/8") as (api, _):
        denied = await api.get("/metrics")
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "metrics_forbidden"
    async with make_api(metrics_allowed_networks="10.0.0.0/8, 127.0.0.0/8") as (api, _):
        allowed = await api.get("/metrics")
        assert allowed.status_code == 200 and b"tmws_info" in allowed.content
