"""/api/v1/patterns: list, read, register, delete, reload — nothing changes on error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import SECRET, ApiFactory
from tmws.auth import TokenAuthority

PATTERN: dict[str, Any] = {
    "name": "deploy_status", "pattern_type": "infrastructure",
    "trigger_pattern": r"deploy(ment)?\s+status", "priority": 5, "cost_tokens": 20,
}


async def test_list_and_filter(api: httpx.AsyncClient) -> None:
    everything = (await api.get("/api/v1/patterns")).json()
    assert everything["count"] == len(everything["patterns"]) > 0
    assert everything["fingerprint"]
    memory = (await api.get("/api/v1/patterns", params={"type": "memory"})).json()
    assert memory["count"] > 0
    assert {p["pattern_type"] for p in memory["patterns"]} == {"memory"}
    wrong = await api.get("/api/v1/patterns", params={"type": "nope"})
    assert wrong.status_code == 422 and "memory" in wrong.json()["error"]["message"]


async def test_register_get_execute_delete(api: httpx.AsyncClient) -> None:
    before = (await api.get("/api/v1/patterns")).json()["fingerprint"]
    created = await api.post("/api/v1/patterns", json=PATTERN)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/v1/patterns/deploy_status"
    assert created.json()["trigger_pattern"] == PATTERN["trigger_pattern"]
    fetched = await api.get("/api/v1/patterns/deploy_status")
    assert fetched.status_code == 200 and fetched.json()["priority"] == 5
    routed = await api.post("/api/v1/route", json={"query": "what is the deploy status"})
    assert routed.json()["pattern_name"] == "deploy_status"
    assert (await api.get("/api/v1/patterns")).json()["fingerprint"] != before

    again = await api.post("/api/v1/patterns", json=PATTERN)
    assert again.status_code == 409 and again.json()["error"]["code"] == "pattern_exists"
    replaced = await api.post("/api/v1/patterns", json={**PATTERN, "priority": 7,
                                                        "replace": True})
    assert replaced.status_code == 201 and replaced.json()["priority"] == 7

    deleted = await api.delete("/api/v1/patterns/deploy_status")
    assert deleted.status_code == 200 and deleted.json()["name"] == "deploy_status"
    assert (await api.get("/api/v1/patterns/deploy_status")).status_code == 404
    assert (await api.delete("/api/v1/patterns/deploy_status")).status_code == 404
    assert (await api.get("/api/v1/patterns")).json()["fingerprint"] == before


async def test_rejected_registrations_change_nothing(api: httpx.AsyncClient) -> None:
    before = (await api.get("/api/v1/patterns")).json()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**PATTERN, "trigger_pattern": "deploy(("}, 422, "deploy_status"),
        ({**PATTERN, "trigger_pattern": r"(?<=x)deploy"}, 422, "deploy_status"),
        ({**PATTERN, "handler": "no_such_handler"}, 422, "no_such_handler"),
        ({**PATTERN, "pattern_type": "cosmic"}, 422, "pattern_type"),
        ({**PATTERN, "colour": "blue"}, 422, "colour"),
        ({**PATTERN, "name": "has space"}, 422, "name"),
        ({k: v for k, v in PATTERN.items() if k != "trigger_pattern"}, 422, "trigger_pattern"),
    ]
    for body, status, named in cases:
        response = await api.post("/api/v1/patterns", json=body)
        assert response.status_code == status, (body, response.text)
        assert named in response.json()["error"]["message"], response.text
    after = (await api.get("/api/v1/patterns")).json()
    assert after == before


async def test_reload(make_api: ApiFactory, tmp_path: Path) -> None:
    library = tmp_path / "patterns.yaml"
    library.write_text(
        "infrastructure_patterns:\n"
        "  - name: ping_service\n    pattern_type: infrastructure\n"
        "    trigger_pattern: 'ping\\s+\\w+'\n")
    async with make_api(pattern_config=str(library)) as (api, _):
        assert (await api.get("/api/v1/patterns")).json()["count"] == 1
        library.write_text(library.read_text() +
                           "  - name: pong_service\n    pattern_type: infrastructure\n"
                           "    trigger_pattern: 'pong\\s+\\w+'\n")
        reloaded = await api.post("/api/v1/patterns/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["patterns"] == 2
        assert reloaded.json()["version"] == 2 and reloaded.headers["x-pattern-set-version"] == "2"
        assert reloaded.json()["propagation"]["visible_everywhere"] is True
        assert reloaded.json()["propagation"]["instances"] == 1
        fingerprint = reloaded.json()["fingerprint"]

        library.write_text("infrastructure_patterns:\n"
                           "  - name: broken\n    pattern_type: [unclosed\n")
        failed = await api.post("/api/v1/patterns/reload")
        assert failed.status_code == 422
        assert failed.json()["error"]["code"] == "invalid_pattern_file"
        assert str(library) in failed.json()["error"]["message"]
        current = (await api.get("/api/v1/patterns")).json()
        assert current["count"] == 2 and current["fingerprint"] == fingerprint
        assert current["version"] == 2

        library.write_text("# nothing left\n")
        emptied = await api.post("/api/v1/patterns/reload")
        assert emptied.status_code == 422, emptied.text
        assert "defines no patterns" in emptied.json()["error"]["message"]
        assert (await api.get("/api/v1/patterns")).json()["count"] == 2
        deliberate = await api.post("/api/v1/patterns/reload", json={"allow_empty": True})
        assert deliberate.status_code == 200 and deliberate.json()["patterns"] == 0


async def test_pattern_named_reload_is_readable(api: httpx.AsyncClient) -> None:
    created = await api.post("/api/v1/patterns", json={**PATTERN, "name": "reload"})
    assert created.status_code == 201
    assert (await api.get("/api/v1/patterns/reload")).json()["name"] == "reload"
    assert (await api.put("/api/v1/patterns/reload")).status_code == 405


async def test_routing_evaluation_over_http(make_api: ApiFactory) -> None:
    authority = TokenAuthority(SECRET, 60)
    admin = {"authorization": f"Bearer {authority.create('ops', ['patterns:admin'])}"}
    caller = {"authorization": f"Bearer {authority.create('ops', ['execute'])}"}
    body = {"labelled": [
        {"expected": "health_check", "query": "check database health"},
        {"expected": "NONE", "query": "tell me a joke"},
        {"expected": "store_memory", "query": "what is the weather in paris"},
    ]}
    async with make_api(auth_enabled="true") as (api, _):
        assert (await api.post("/api/v1/patterns/eval", json=body,
                               headers=caller)).status_code == 403
        answer = await api.post("/api/v1/patterns/eval", json=body, headers=admin)
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert (report["total"], report["correct"]) == (3, 2)
        assert report["misroutes"][0]["line"] == 2
        assert report["scorer"] == "lexical"
        stricter = await api.post("/api/v1/patterns/eval", headers=admin,
                                  json={**body, "min_score": 0.99, "execution_mode": "fast"})
        assert stricter.json()["min_score"] == 0.99 and stricter.json()["mode"] == "fast"
        unknown = await api.post("/api/v1/patterns/eval", headers=admin, json={
            "labelled": [{"expected": "nope", "query": "x"}]})
        assert unknown.status_code == 422
        assert "$.labelled[0].expected" in unknown.json()["error"]["message"]
        empty = await api.post("/api/v1/patterns/eval", headers=admin, json={"labelled": []})
        assert empty.status_code == 422
