"""/api/v1/execute and /api/v1/route over the ASGI app: answers and failure statuses."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from tests.conftest import ApiFactory
from tmws.handlers import HandlerContext


async def test_execute_and_route(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/execute", json={"query": "check health"})
    assert response.status_code == 200
    assert response.json()["pattern_name"] == "health_check"
    first = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", first)
    assert (await api.get("/health")).headers["x-request-id"] != first
    decision = await api.post("/api/v1/route", json={"query": "recall memories about auth"})
    assert decision.json()["decided_by"] == "trigger"


async def test_request_id_is_echoed_when_sane(api: httpx.AsyncClient) -> None:
    sane = await api.get("/health", headers={"x-request-id": "abc-123"})
    assert sane.headers["x-request-id"] == "abc-123"
    hostile = await api.get("/health", headers={"x-request-id": "a b\x01c" + "x" * 200})
    assert hostile.headers["x-request-id"] != "a b\x01c"
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", hostile.headers["x-request-id"])


async def test_abstention_is_an_answer(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/execute", json={"query": "zzqx vorpal"})
    assert response.status_code == 200
    assert response.json()["error_code"] == "no_pattern_matched"


async def test_timeout_is_504_with_the_result(make_api: ApiFactory) -> None:
    async with make_api(pattern_infra_timeout="50") as (api, engine):
        async def slow(ctx: HandlerContext) -> Any:
            await asyncio.sleep(5)

        engine.bind_handler("slow", slow)
        created = await api.post("/api/v1/patterns", json={
            "name": "slow_probe", "pattern_type": "infrastructure",
            "trigger_pattern": "slow probe", "handler": "slow"})
        assert created.status_code == 201
        response = await api.post("/api/v1/execute", json={"query": "run the slow probe"})
        assert response.status_code == 504
        body = response.json()
        assert body["error"]["code"] == "pattern_timeout"
        assert "TMWS_PATTERN_INFRA_TIMEOUT" in body["error"]["message"]
        assert body["result"]["pattern_name"] == "slow_probe"


async def test_bad_requests(api: httpx.AsyncClient) -> None:
    cases: list[tuple[Any, int, str]] = [
        (b"{", 400, "malformed_json"),
        (b"", 400, "empty_body"),
        (b'{"query": "x", "execution_mode": "warp"}', 422, "unknown_mode"),
        (b'{"query": "x", "colour": 1}', 422, "validation_error"),
        (b'{"query": 5}', 422, "validation_error"),
        (b'{"query": "   "}', 422, "empty_query"),
        (('{"query": "' + "x" * 3000 + '"}').encode(), 413, "query_too_long"),
        # Context fields are checked whatever the query routes to.
        (b'{"query": "x", "context": {"limit": 0}}', 422, "invalid_request"),
    ]
    for body, status, code in cases:
        response = await api.post("/api/v1/execute", content=body,
                                  headers={"content-type": "application/json"})
        assert response.status_code == status, (body[:40], response.text)
        if code:
            assert response.json()["error"]["code"] == code
    wrong_type = await api.post("/api/v1/execute", content=b"query=x",
                                headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    assert (await api.get("/api/v1/execute")).headers["allow"] == "POST"
