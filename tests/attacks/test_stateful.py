"""A bounded hypothesis state machine against the served instance: three tenants store,
read, search, recall and delete memories — with hostile fields mixed in — and after every
step the service's answers must match a model of what each tenant may see.

Invariants: no 5xx ever; an acknowledged memory is readable by its owner (and, if shared,
by everyone) until it is deleted; a private memory never reaches another tenant through any
route or the cache; only the owner deletes; a refused write stores nothing.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from tests.fix_server import Served

TENANTS = ("a", "b", "c")
WORDS = st.sampled_from(["alpha", "bravo", "delta", "vault", "rotation", "incident",
                         "deploy", "cache", "token"])
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12)


class Tenants(RuleBasedStateMachine):
    served: Served  # set by the test below

    memories = Bundle("memories")

    def __init__(self) -> None:
        super().__init__()
        run = uuid.uuid4().hex[:8]
        self.names = {t: f"st-{run}-{t}" for t in TENANTS}
        self.headers = {t: self.served.headers(self.names[t]) for t in TENANTS}
        self.model: dict[int, tuple[str, str, str]] = {}  # id -> (owner, content, visibility)
        self.client = httpx.Client(base_url=self.served.base, timeout=30)

    def teardown(self) -> None:
        self.client.close()

    def _call(self, method: str, path: str, tenant: str, body: Any = None,
              raw: bytes | None = None) -> httpx.Response:
        headers = {**self.headers[tenant], "content-type": "application/json"}
        content = raw if raw is not None else (None if body is None else json.dumps(body))
        response = self.client.request(method, path, content=content, headers=headers)
        assert response.status_code < 500, (method, path, response.status_code, response.text)
        return response

    def visible(self, tenant: str) -> dict[int, str]:
        name = self.names[tenant]
        return {memory_id: content for memory_id, (owner, content, visibility)
                in self.model.items() if owner == name or visibility == "shared"}

    @rule(target=memories, tenant=st.sampled_from(TENANTS), words=st.lists(WORDS, min_size=1,
          max_size=6), visibility=st.sampled_from(["private", "shared"]), metadata=JSON,
          importance=st.one_of(st.floats(0, 1), st.integers(-(2**70), 2**70)))
    def store(self, tenant: str, words: list[str], visibility: str, metadata: Any,
              importance: float) -> int:
        content = f"{' '.join(words)} {uuid.uuid4().hex[:6]}"
        body = {"content": content, "visibility": visibility, "importance": importance,
                "metadata": metadata if isinstance(metadata, dict) else {"v": metadata}}
        response = self._call("POST", "/api/v1/memories", tenant, body)
        if response.status_code == 201:
            stored = response.json()
            assert stored["content"] == content and stored["visibility"] == visibility
            self.model[stored["id"]] = (self.names[tenant], content, visibility)
            return int(stored["id"])
        # Refused with a clear error: an importance outside 0..1, or a NUL character the
        # database cannot store (named by the rules, before anything is written).
        assert response.status_code == 422, response.text
        assert not 0 <= importance <= 1 or "NUL" in response.text, response.text
        return -1

    @rule(tenant=st.sampled_from(TENANTS), depth=st.integers(33, 3000))
    def store_hostile(self, tenant: str, depth: int) -> None:
        raw = (b'{"content":"hostile","visibility":"shared","metadata":{"x":'
               + b"[" * depth + b"]" * depth + b"}}")
        response = self._call("POST", "/api/v1/memories", tenant, raw=raw)
        assert response.status_code == 400, response.text

    @rule(memory_id=memories, tenant=st.sampled_from(TENANTS))
    def read(self, memory_id: int, tenant: str) -> None:
        if memory_id < 0:
            return
        response = self._call("GET", f"/api/v1/memories/{memory_id}", tenant)
        expected = self.visible(tenant).get(memory_id)
        if expected is None:
            assert response.status_code == 404, response.text
        else:
            assert response.status_code == 200 and response.json()["content"] == expected

    @rule(memory_id=memories, tenant=st.sampled_from(TENANTS))
    def delete(self, memory_id: int, tenant: str) -> None:
        if memory_id < 0:
            return
        response = self._call("DELETE", f"/api/v1/memories/{memory_id}", tenant)
        entry = self.model.get(memory_id)
        if entry is not None and entry[0] == self.names[tenant]:
            assert response.status_code == 200, response.text
            del self.model[memory_id]
        else:
            assert response.status_code == 404, response.text

    @rule(tenant=st.sampled_from(TENANTS), word=WORDS,
          how=st.sampled_from(["search", "vector", "recall", "recent", "important"]))
    def look(self, tenant: str, word: str, how: str) -> None:
        if how in ("search", "vector"):
            body: dict[str, Any] = {"query": word, "limit": 100,
                                    "method": "vector" if how == "vector" else "hybrid"}
            found = self._call("POST", "/api/v1/memories/search", tenant, body).json()
            contents = [m["content"] for m in found["results"]]
        else:
            query = {"recall": f"recall memories about {word}", "recent": "show recent notes",
                     "important": "list important memories"}[how]
            answer = self._call("POST", "/api/v1/execute", tenant,
                                {"query": query, "context": {"limit": 100}}).json()
            assert answer["success"], answer
            contents = [m["content"] for m in answer["result"]["memories"]]
        mine = set(self.visible(tenant).values())
        foreign = {content for _, (owner, content, visibility) in self.model.items()
                   if owner != self.names[tenant] and visibility == "private"}
        run = next(iter(self.names.values()))[:-2]
        ours = [c for c in contents if c in mine | foreign or run in c]
        assert not set(ours) & foreign, (tenant, how, ours)
        deleted_or_unknown = [c for c in ours if c not in mine]
        assert not deleted_or_unknown, (tenant, how, deleted_or_unknown)

    @invariant()
    def owners_still_read_their_memories(self) -> None:
        for memory_id, (owner, content, _) in list(self.model.items())[-3:]:
            tenant = next(t for t, name in self.names.items() if name == owner)
            response = self._call("GET", f"/api/v1/memories/{memory_id}", tenant)
            assert response.status_code == 200 and response.json()["content"] == content


def test_tenants_state_machine(armoured: Served) -> None:
    Tenants.served = armoured
    runner = Tenants.TestCase
    runner.settings = settings(max_examples=12, stateful_step_count=15, deadline=None,
                               database=None, derandomize=False,
                               suppress_health_check=list(HealthCheck))
    runner().runTest()
