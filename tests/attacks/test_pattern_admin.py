"""Pattern administration across workers: no acknowledged change is lost, every worker
converges, and an empty file does not wipe the library."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.fix_server import Served


def admin(served: Served) -> dict[str, str]:
    return served.headers("ops", "patterns:admin", "execute", "metrics:read")


def every_worker(served: Served, headers: dict[str, str], seen_enough: int = 2
                 ) -> dict[str, dict[str, Any]]:
    """The pattern list as each worker answers it: new connections land on either worker
    (asked until both have answered, by their instance ids)."""
    views: dict[str, dict[str, Any]] = {}
    for _ in range(200):
        with httpx.Client(base_url=served.base, headers=headers, timeout=10) as client:
            stats = client.get("/api/v1/stats").json()
            listed = client.get("/api/v1/patterns").json()
        instance = stats["registry_stats"]["sync"]["instance"]
        views.setdefault(instance, listed)
        if len(views) >= seen_enough:
            return views
    raise AssertionError(f"only {len(views)} worker(s) answered")


def names(view: dict[str, Any]) -> set[str]:
    return {p["name"] for p in view["patterns"]}


def test_concurrent_registrations_all_survive_on_every_worker(armoured: Served) -> None:
    """Finding 5: 12 concurrent POST /api/v1/patterns all answered 201, but only 8 patterns
    survived on both workers (each worker published its whole set, last writer wins)."""
    headers = admin(armoured)
    tag = uuid.uuid4().hex[:6]
    wanted = {f"burst_{tag}_{i}" for i in range(12)}

    def register(name: str) -> httpx.Response:
        return httpx.post(f"{armoured.base}/api/v1/patterns", headers=headers, timeout=60,
                          json={"name": name, "pattern_type": "infrastructure",
                                "trigger_pattern": rf"\b{name}\b"})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(register, sorted(wanted)))
    assert [a.status_code for a in answers] == [201] * 12, [a.text for a in answers]
    versions = sorted(int(a.headers["x-pattern-set-version"]) for a in answers)
    assert len(set(versions)) == 12  # each change its own version, none overwritten
    assert all(a.headers["x-pattern-set-visible-everywhere"] == "true" for a in answers)
    views = every_worker(armoured, headers)
    for view in views.values():
        assert wanted <= names(view)
        assert view["version"] >= versions[-1]
    assert len({v["fingerprint"] for v in views.values()}) == 1


def test_sequential_deletes_do_not_resurrect(armoured: Served) -> None:
    """Finding 5: 17 sequential DELETEs (each 200) left 5 patterns resurrected by a worker
    that published its stale set."""
    headers = admin(armoured)
    tag = uuid.uuid4().hex[:6]
    doomed = [f"doomed_{tag}_{i}" for i in range(17)]
    for name in doomed:
        created = httpx.post(f"{armoured.base}/api/v1/patterns", headers=headers, timeout=30,
                             json={"name": name, "pattern_type": "infrastructure",
                                   "trigger_pattern": rf"\b{name}\b"})
        assert created.status_code == 201, created.text
    for name in doomed:
        deleted = httpx.delete(f"{armoured.base}/api/v1/patterns/{name}", headers=headers,
                               timeout=30)
        assert deleted.status_code == 200, deleted.text
    time.sleep(2.5)  # two heartbeats: a worker holding a stale set would have spoken by now
    for view in every_worker(armoured, headers).values():
        assert not set(doomed) & names(view)


def test_an_empty_file_does_not_wipe_the_library(armoured: Served) -> None:
    """Finding 6: reloading an empty pattern file answered 200 with 0 patterns, on every
    worker."""
    headers = admin(armoured)
    library = Path(armoured.log.parent / "patterns.yaml")
    original = library.read_text()
    before = every_worker(armoured, headers)
    try:
        for empty in ("", "# all gone\n", "infrastructure_patterns: []\n"):
            library.write_text(empty)
            response = httpx.post(f"{armoured.base}/api/v1/patterns/reload", headers=headers,
                                  timeout=30)
            assert response.status_code == 422, response.text
            assert "defines no patterns" in response.json()["error"]["message"]
        after = every_worker(armoured, headers)
        assert {k: v["count"] for k, v in after.items()} == \
            {k: v["count"] for k, v in before.items()}
    finally:
        library.write_text(original)
