"""Tokens that must not pass, against the served instance."""

from __future__ import annotations

import base64
import json
import time

import httpx
import jwt
import pytest

from tests.conftest import SECRET
from tests.fix_server import Served


def forged(claims: dict[str, object], *, key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def unsigned(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


NOW = int(time.time())
GOOD = {"iss": "tmws", "sub": "mallory", "scope": "execute memories:read", "iat": NOW,
        "exp": NOW + 600}


@pytest.mark.parametrize(("token", "code"), [
    (unsigned(GOOD), "token_algorithm"),
    (forged(GOOD, key="another-secret-0123456789-abcdefghijklmnop"), "token_invalid"),
    (forged({**GOOD, "exp": NOW - 60, "iat": NOW - 120}), "token_expired"),
    (forged({**GOOD, "scope": "execute godmode"}), "token_claims"),
    (forged({**GOOD, "sub": "a b"}), "token_claims"),
    (forged({**GOOD, "iss": "someone-else"}), "token_claims"),
    (forged(GOOD)[:-4] + "AAAA", "token_invalid"),
    ("not-a-token", "token_invalid"),
])
def test_bad_tokens_are_401_with_a_reason(armoured: Served, token: str, code: str) -> None:
    response = httpx.post(f"{armoured.base}/api/v1/execute", json={"query": "check health"},
                          headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == code
    assert SECRET not in response.text and token not in response.text


def test_another_namespace_is_403(armoured: Served) -> None:
    headers = armoured.headers("alice")
    for path, body in (("/api/v1/execute", {"query": "recall memories about x",
                                             "context": {"namespace": "bob"}}),
                       ("/api/v1/memories", {"content": "x", "namespace": "bob"}),
                       ("/api/v1/memories/search", {"namespace": "bob"})):
        response = httpx.post(f"{armoured.base}{path}", json=body, headers=headers,
                              timeout=10)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["code"] == "namespace_forbidden"
    assert httpx.get(f"{armoured.base}/api/v1/memories/1?namespace=bob", headers=headers,
                     timeout=10).status_code == 403
