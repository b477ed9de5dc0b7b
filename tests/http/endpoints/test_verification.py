"""GET /api/v1/verify: the installation checks on the running engine, behind patterns:admin."""

from __future__ import annotations

from tests.conftest import SECRET, ApiFactory
from tmws.auth import TokenAuthority


async def test_verify_needs_admin_and_reports_on_the_running_engine(
        make_api: ApiFactory, migrated_database: str, redis_url: str) -> None:
    authority = TokenAuthority(SECRET, 60)
    admin = {"authorization": f"Bearer {authority.create('ops', ['patterns:admin'])}"}
    caller = {"authorization": f"Bearer {authority.create('ops', ['execute', 'metrics:read'])}"}
    # A database of its own: the session's has a vector index that other tests fill.
    async with make_api(on=migrated_database, auth_enabled="true",
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
