"""/api/v1/memories: store, read, delete, search — within one namespace."""

from __future__ import annotations

import httpx


async def test_store_read_search_delete(api: httpx.AsyncClient, namespace: str) -> None:
    content = "The auth service rotates its signing keys every Monday. " + "x" * 600
    created = await api.post("/api/v1/memories", json={
        "content": content, "tags": ["Auth", "keys"], "importance": 0.9,
        "namespace": namespace, "metadata": {"source": "runbook"}})
    assert created.status_code == 201, created.text
    record = created.json()
    memory_id = record["id"]
    assert created.headers["location"] == f"/api/v1/memories/{memory_id}"
    assert record["content"] == content and record["truncated"] is False
    assert record["tags"] == ["auth", "keys"] and record["namespace"] == namespace

    fetched = await api.get(f"/api/v1/memories/{memory_id}", params={"namespace": namespace})
    assert fetched.status_code == 200 and fetched.json()["content"] == content

    found = await api.post("/api/v1/memories/search", json={
        "query": "signing keys rotation", "namespace": namespace})
    assert found.status_code == 200
    assert [r["id"] for r in found.json()["results"]] == [memory_id]
    by_tag = await api.post("/api/v1/memories/search", json={"tags": ["auth"],
                                                            "namespace": namespace})
    assert by_tag.json()["count"] == 1
    by_vector = await api.post("/api/v1/memories/search", json={
        "query": "signing keys", "method": "vector", "namespace": namespace})
    assert by_vector.json()["results"][0]["id"] == memory_id
    important = await api.post("/api/v1/memories/search", json={"min_importance": 0.8,
                                                                "namespace": namespace})
    assert memory_id in [r["id"] for r in important.json()["results"]]
    recent = await api.post("/api/v1/memories/search", json={"namespace": namespace})
    assert recent.json()["results"][0]["id"] == memory_id

    other = await api.get(f"/api/v1/memories/{memory_id}", params={"namespace": "someone"})
    assert other.status_code == 404
    assert (await api.delete(f"/api/v1/memories/{memory_id}",
                             params={"namespace": "someone"})).status_code == 404
    deleted = await api.delete(f"/api/v1/memories/{memory_id}", params={"namespace": namespace})
    assert deleted.status_code == 200 and deleted.json() == {"deleted": memory_id}
    assert (await api.get(f"/api/v1/memories/{memory_id}",
                          params={"namespace": namespace})).status_code == 404


async def test_invalid_memories(api: httpx.AsyncClient) -> None:
    cases = [({"content": ""}, "content"), ({"content": "x", "importance": 2}, "importance"),
             ({"content": "x", "visibility": "public"}, "visibility"),
             ({"content": "x", "tgas": []}, "tgas"), ({}, "content")]
    for body, named in cases:
        response = await api.post("/api/v1/memories", json=body)
        assert response.status_code == 422, response.text
        assert named in response.json()["error"]["message"]
    for bad in ("abc", "-1", "99999999999999999999999"):
        response = await api.get(f"/api/v1/memories/{bad}")
        assert response.status_code == 422 and "id" in response.json()["error"]["message"]
    search = await api.post("/api/v1/memories/search", json={"limit": 1000})
    assert search.status_code == 422 and "limit" in search.json()["error"]["message"]
