"""GET /api/v1/verify: the installation checks on the running engine, behind patterns:admin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from tests.conftest import SECRET, ApiFactory, make_settings, scratch_database
from tmws.auth import TokenAuthority
from tmws.engine import PatternExecutionEngine, create_pattern_execution_engine
from tmws.http.app import TmwsApp


@asynccontextmanager
async def api_on(url: str, **overrides: str
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, PatternExecutionEngine]]:
    """The app in process on a database of its own (make_api serves the shared one, whose
    vector index other tests fill)."""
    settings = make_settings(url, **overrides)
    async with await create_pattern_execution_engine(settings) as engine:
        app = TmwsApp(settings)
        app.attach(engine)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://tmws") as client:
            yield client, engine


async def test_verify_needs_admin_and_reports_on_the_running_engine(
        database_url: str, redis_url: str) -> None:
    authority = TokenAuthority(SECRET, 60)
    admin = {"authorization": f"Bearer {authority.create('ops', ['patterns:admin'])}"}
    caller = {"authorization": f"Bearer {authority.create('ops', ['execute', 'metrics:read'])}"}
    async with scratch_database(database_url, migrate=make_settings(database_url)) as url, \
            api_on(url, auth_enabled="true", secret_key=SECRET,
                   redis_url=redis_url) as (api, engine):
        assert (await api.get("/api/v1/verify")).status_code == 401
        denied = await api.get("/api/v1/verify", headers=caller)
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "insufficient_scope"
        queries = engine.database.pool_stats()["queries"]
        answer = await api.get("/api/v1/verify", headers=admin)
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert report["exit_code"] == 0 and report["status"] == "ok", report
        checks = {check["name"]: check for check in report["checks"]}
        assert "running set: 15 patterns" in checks["patterns"]["detail"]
        assert checks["execute:memory"]["status"] == "ok"
        # The engine's own pool served the database checks and the executions.
        assert engine.database.pool_stats()["queries"] > queries
        quick = await api.get("/api/v1/verify", params={"execute": "false"}, headers=admin)
        assert not any(c["name"].startswith("execute:") for c in quick.json()["checks"])
        bad = await api.get("/api/v1/verify", params={"execute": "maybe"}, headers=admin)
        assert bad.status_code == 422 and "execute" in bad.json()["error"]["message"]


async def test_verify_answers_200_when_a_check_fails(make_api: ApiFactory,
                                                     database_url: str) -> None:
    async with make_api(redis_url="redis://127.0.0.1:1/0", redis_timeout="0.2") as (api, _):
        answer = await api.get("/api/v1/verify", params={"execute": "false"})
    assert answer.status_code == 200
    report = answer.json()
    assert report["exit_code"] == 2 and report["status"] == "fail"
    redis = next(check for check in report["checks"] if check["name"] == "redis")
    assert redis["status"] == "fail" and "unavailable" in redis["detail"]
