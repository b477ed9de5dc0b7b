"""Liveness, readiness, statistics, metrics access and the generated OpenAPI document."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql

from tests.conftest import SECRET, ApiFactory, PrivateRedis, make_settings, scratch_database
from tmws.auth import TokenAuthority
from tmws.engine import create_pattern_execution_engine
from tmws.http.app import TmwsApp
from tmws.http.routes import ROUTES


async def test_health_and_ready(api: httpx.AsyncClient) -> None:
    assert (await api.get("/health")).json()["status"] == "ok"
    ready = await api.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"pattern_engine": True, "database": True, "redis": True,
                            "healthy": True, "ready": True}


async def test_ready_stays_200_but_unhealthy_when_redis_is_down(make_api: ApiFactory) -> None:
    async with make_api(redis_url="redis://127.0.0.1:1/0", redis_timeout="0.2") as (api, _):
        ready = await api.get("/health/ready")
        assert ready.status_code == 200  # serving from L1: stays in rotation
        assert ready.json() == {"pattern_engine": True, "database": True, "redis": False,
                                "healthy": False, "ready": True}  # what: /api/v1/health
        detail = await api.get("/api/v1/health")
        assert detail.status_code == 503
        assert detail.json()["checks"]["redis_error"].startswith("unavailable")


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


async def test_probes_answer_without_a_token_and_say_nothing_more(make_api: ApiFactory) -> None:
    authority = TokenAuthority(SECRET, 60)
    async with make_api(auth_enabled="true") as (api, _):
        for path in ("/health", "/health/live"):
            assert (await api.get(path)).status_code == 200
        ready = await api.get("/health/ready")
        assert ready.status_code == 200
        # The readiness booleans only: no error texts, versions, pools or pattern counts.
        assert ready.json() == {"pattern_engine": True, "database": True, "redis": True,
                                "healthy": True, "ready": True}
        assert (await api.get("/api/v1/health")).status_code == 401
        caller = {"authorization": f"Bearer {authority.create('ops', ['execute'])}"}
        assert (await api.get("/api/v1/health", headers=caller)).status_code == 403
        metrics = {"authorization": f"Bearer {authority.create('ops', ['metrics:read'])}"}
        detail = await api.get("/api/v1/health", headers=metrics)
        assert detail.status_code == 200
        body = detail.json()
        assert body["healthy"] is True and body["checks"]["database"] is True
        assert body["engine"]["version"] and "pool" in body["database"]


async def test_readiness_is_503_without_a_token_when_the_database_is_down(
        database_url: str) -> None:
    authority = TokenAuthority(SECRET, 60)
    async with scratch_database(database_url, migrate=make_settings(database_url)) as url:
        settings = make_settings(url, auth_enabled="true", secret_key=SECRET)
        async with await create_pattern_execution_engine(settings) as engine:
            app = TmwsApp(settings)
            app.attach(engine)
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://tmws") as api:
                assert (await api.get("/health/ready")).status_code == 200
                name = urlsplit(url).path.lstrip("/")
                async with await psycopg.AsyncConnection.connect(database_url,
                                                                 autocommit=True) as conn:
                    await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)")
                                       .format(sql.Identifier(name)))
                for _ in range(100):  # a healthy answer is reused for up to a second
                    ready = await api.get("/health/ready")
                    if ready.status_code == 503:
                        break
                    await asyncio.sleep(0.1)
                assert ready.status_code == 503, ready.text
                assert ready.json() == {"pattern_engine": True, "database": False,
                                        "redis": True, "healthy": False, "ready": False}
                metrics = {"authorization":
                           f"Bearer {authority.create('ops', ['metrics:read'])}"}
                detail = await api.get("/api/v1/health", headers=metrics)
                assert detail.status_code == 503
                assert detail.json()["checks"]["database_error"] == (
                    "unavailable: no answer to a probe within 2 s")
            for guard in app._guards:
                await guard.close()
