"""Token minting and verification (tmws.auth): pure unit tests on an injected clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest

from tests.fix_clock import START, Clock
from tmws.auth import LEEWAY_SECONDS, SCOPES, Principal, TokenAuthority, parse_scopes
from tmws.config import Settings
from tmws.errors import AuthenticationError, ConfigError, PermissionDeniedError

# 64 characters: enough even for the HS512 token built to be refused.
SECRET = "unit-test-secret-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJK"
OTHER_SECRET = "another-secret-zyxwvutsrqponmlkjihgfedcba9876543"


def authority(clock: Clock | None = None, **kwargs: Any) -> TokenAuthority:
    return TokenAuthority(SECRET, 60, clock=clock or Clock(), **kwargs)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(START)
    base: dict[str, Any] = {"iss": "tmws", "sub": "agent", "scope": "execute", "iat": now,
                            "nbf": now, "exp": now + 600, "jti": "j1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hand_made(header: dict[str, Any], payload: dict[str, Any], secret: str | None = SECRET) -> str:
    """A token built without PyJWT; HMAC-SHA256 signed unless ``secret`` is None."""
    signing_input = (f"{b64url(json.dumps(header).encode())}."
                     f"{b64url(json.dumps(payload).encode())}")
    if secret is None:
        return signing_input + "."
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def failure(auth: TokenAuthority, token: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as caught:
        auth.verify(token)
    assert caught.value.status == 401
    message = str(caught.value)
    assert SECRET not in message and (not token or token not in message)
    assert all(part not in message for part in token.split(".") if len(part) > 8)
    return caught.value


# --- round trip ---------------------------------------------------------------------------


def test_round_trip(clock: Clock) -> None:
    auth = authority(clock)
    token = auth.create("team.a:b@c-d_e", ["memories:read", "execute"])
    principal = auth.verify(token)
    assert principal.namespace == "team.a:b@c-d_e"
    assert principal.scopes == frozenset({"execute", "memories:read"})
    assert principal.expires_at == int(START) + 60 * 60
    assert principal.token_id
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False,
                                                                     "verify_iat": False,
                                                                     "verify_nbf": False})
    assert claims["scope"] == "execute memories:read"  # OAuth style, canonical order
    assert claims["iss"] == "tmws" and claims["sub"] == "team.a:b@c-d_e"
    assert claims["iat"] == claims["nbf"] == int(START)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_each_token_gets_its_own_id_and_a_chosen_lifetime() -> None:
    auth = authority()
    first = auth.verify(auth.create("a", ["execute"], expires_minutes=5))
    second = auth.verify(auth.create("a", ["execute"]))
    assert first.token_id != second.token_id
    assert first.expires_at == int(START) + 300


def test_scopes_as_one_string() -> None:
    auth = authority()
    principal = auth.verify(auth.create("a", "execute,memories:write metrics:read"))
    assert principal.scopes == {"execute", "memories:write", "metrics:read"}
    assert parse_scopes(" execute, ,memories:read ") == ("execute", "memories:read")


def test_from_settings() -> None:
    settings = Settings.from_env({"TMWS_SECRET_KEY": SECRET, "TMWS_TOKEN_EXPIRE_MINUTES": "7"})
    auth = TokenAuthority.from_settings(settings)
    assert SECRET not in repr(auth)
    token = auth.create("a", ["execute"])
    assert TokenAuthority(SECRET, 60).verify(token).namespace == "a"


@pytest.mark.parametrize("secret", [None, "too-short"])
def test_from_settings_needs_a_long_secret(secret: str | None) -> None:
    env = {} if secret is None else {"TMWS_SECRET_KEY": secret}
    with pytest.raises(ConfigError) as caught:
        TokenAuthority.from_settings(Settings.from_env(env))
    assert caught.value.variable == "TMWS_SECRET_KEY"
    assert "32" in str(caught.value)
    if secret:
        assert secret not in str(caught.value)


def test_short_secret_refused_by_the_constructor() -> None:
    with pytest.raises(ValueError, match="32"):
        TokenAuthority("x" * 31, 60)


# --- scopes -------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", SCOPES)
def test_each_scope_is_checked(scope: str) -> None:
    auth = authority()
    principal = auth.verify(auth.create("a", [scope]))
    principal.require(scope)
    for other in SCOPES:
        if other == scope:
            continue
        with pytest.raises(PermissionDeniedError) as caught:
            principal.require(other)
        assert caught.value.code == "insufficient_scope" and caught.value.status == 403
        assert f"lacks the {other} scope" in str(caught.value)
        assert f"tmws token create --scopes {other}" in str(caught.value)


def test_unrestricted_principal_has_every_scope() -> None:
    principal = Principal.unrestricted("default")
    assert principal.namespace == "default" and principal.expires_at is None
    for scope in SCOPES:
        principal.require(scope)


def test_requiring_an_unknown_scope_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="patterns:admin"):
        Principal("a", frozenset()).require("patterns:adm")


def test_unknown_scope_at_create() -> None:
    with pytest.raises(ValueError) as caught:
        authority().create("a", ["execute", "memories:delete"])
    message = str(caught.value)
    assert "'memories:delete'" in message
    assert all(scope in message for scope in SCOPES)


def test_no_scope_at_create() -> None:
    with pytest.raises(ValueError, match="at least one scope"):
        authority().create("a", [])


@pytest.mark.parametrize("namespace", ["", "a b", "x" * 129, "ns/x", "ns\n", "naïve", "a;b"])
def test_invalid_namespace(namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        authority().create(namespace, ["execute"])


def test_longest_namespace() -> None:
    auth = authority()
    assert auth.verify(auth.create("n" * 128, ["execute"])).namespace == "n" * 128


def test_non_positive_lifetime() -> None:
    with pytest.raises(ValueError, match="at least 1 minute"):
        authority().create("a", ["execute"], expires_minutes=0)


# --- rejected tokens ----------------------------------------------------------------------


def test_tampered_payload() -> None:
    auth = authority()
    token = auth.create("a", ["execute"])
    header, payload, signature = token.split(".")
    middle = len(payload) // 2
    flipped = "B" if payload[middle] != "B" else "C"
    tampered = f"{header}.{payload[:middle]}{flipped}{payload[middle + 1:]}.{signature}"
    assert failure(auth, tampered).code == "token_invalid"


def test_payload_swapped_for_a_wellformed_one() -> None:
    auth = authority()
    header, _, signature = auth.create("a", ["execute"]).split(".")
    forged = b64url(json.dumps(claims(scope=" ".join(SCOPES))).encode())
    assert failure(auth, f"{header}.{forged}.{signature}").code == "token_invalid"


def test_signed_with_another_secret() -> None:
    other = TokenAuthority(OTHER_SECRET, 60, clock=Clock())
    assert failure(authority(), other.create("a", ["execute"])).code == "token_invalid"


@pytest.mark.parametrize("token", ["", "not-a-token", "a.b", "a.b.c", "....", "é.x.y"])
def test_malformed(token: str) -> None:
    assert failure(authority(), token).code == "token_invalid"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none(alg: str) -> None:
    token = hand_made({"alg": alg, "typ": "JWT"}, claims(scope=" ".join(SCOPES)), secret=None)
    error = failure(authority(), token)
    assert error.code == "token_algorithm"
    assert "HS256" in str(error)


@pytest.mark.parametrize("alg", ["HS512", "RS256", "HS384", "ES256"])
def test_other_algorithm_labels(alg: str) -> None:
    # Signed with the right secret (HMAC-SHA256) but labelled otherwise: the label decides.
    error = failure(authority(), hand_made({"alg": alg, "typ": "JWT"}, claims()))
    assert error.code == "token_algorithm"
    assert alg in str(error) and "HS256" in str(error)


def test_genuine_hs512_token() -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    assert failure(authority(), token).code == "token_algorithm"


@pytest.mark.parametrize("header", [{"typ": "JWT"}, {"alg": ["HS256"]}, {"alg": "x" * 40}])
def test_missing_or_odd_algorithm(header: dict[str, Any]) -> None:
    error = failure(authority(), hand_made(header, claims()))
    assert error.code == "token_algorithm"
    assert "unsupported algorithm" in str(error)


@pytest.mark.parametrize("missing", ["sub", "exp", "iat", "iss"])
def test_missing_required_claim(missing: str) -> None:
    token = jwt.encode(claims(**{missing: None}), SECRET, algorithm="HS256")
    error = failure(authority(), token)
    assert error.code == "token_claims" and missing in str(error)


@pytest.mark.parametrize("overrides", [
    {"scope": None},
    {"scope": ["execute"]},
    {"scope": "execute memories:delete"},
    {"sub": ""},
    {"sub": "a b"},
    {"sub": 42},
    {"iss": "someone-else"},
    {"exp": "soon"},
    {"exp": True},
    {"exp": 10**400},
    {"iat": float("nan")},
    {"aud": "elsewhere"},
])
def test_bad_claims(overrides: dict[str, Any]) -> None:
    token = jwt.encode(claims(**overrides), SECRET, algorithm="HS256")
    assert failure(authority(), token).code == "token_claims"


def test_unknown_scope_in_a_signed_token_is_named() -> None:
    token = jwt.encode(claims(scope="execute memories:delete"), SECRET, algorithm="HS256")
    assert "memories:delete" in str(failure(authority(), token))


def test_not_yet_valid(clock: Clock) -> None:
    token = authority(Clock(START + 3600)).create("a", ["execute"])
    error = failure(authority(clock), token)
    assert error.code == "token_invalid" and "clocks" in str(error)
    clock.now = START + 3600 - LEEWAY_SECONDS  # within the skew allowance
    assert authority(clock).verify(token).namespace == "a"


# --- expiry and the cache -----------------------------------------------------------------


def test_expired(clock: Clock) -> None:
    token = authority(clock).create("a", ["execute"], expires_minutes=1)
    clock.now = START + 60 + LEEWAY_SECONDS
    error = failure(authority(clock), token)
    assert error.code == "token_expired"
    assert "2023-11-14T22:14:20+00:00" in str(error)  # START + 60 s, in UTC
    assert "mint a new one" in str(error)


def test_expiry_allows_a_little_clock_skew(clock: Clock) -> None:
    token = authority(clock).create("a", ["execute"], expires_minutes=1)
    clock.now = START + 60 + LEEWAY_SECONDS - 0.5
    assert authority(clock).verify(token).namespace == "a"


def test_cached_token_is_rejected_once_it_expires(clock: Clock) -> None:
    auth = authority(clock)
    token = auth.create("a", ["execute"], expires_minutes=1)
    first = auth.verify(token)
    assert auth.verify(token) is first  # served from the cache
    clock.now = START + 59
    assert auth.verify(token) is first
    clock.now = START + 60 + LEEWAY_SECONDS
    assert failure(auth, token).code == "token_expired"
    assert failure(auth, token).code == "token_expired"  # and again without the cache


def test_cache_is_bounded() -> None:
    auth = authority(cache_size=2)
    tokens = [auth.create(f"ns{i}", ["execute"]) for i in range(3)]
    principals = [auth.verify(token) for token in tokens]
    assert len(auth._cache) == 2
    assert auth.verify(tokens[0]) == principals[0]  # evicted, verified again
    assert len(auth._cache) == 2


def test_failures_are_not_cached() -> None:
    auth = authority()
    failure(auth, authority(Clock(START + 3600)).create("a", ["execute"]))
    assert not auth._cache


# --- the Authorization header -------------------------------------------------------------


@pytest.mark.parametrize("value", [b"Bearer ", b"bearer {}", b"BEARER   {}  ", b"Bearer {}"])
def test_bearer_header(value: bytes) -> None:
    auth = authority()
    token = auth.create("a", ["execute"])
    if b"{}" not in value:
        with pytest.raises(AuthenticationError) as caught:
            auth.authenticate(value)
        assert caught.value.code == "token_missing"
        return
    assert auth.authenticate(value.replace(b"{}", token.encode())).namespace == "a"


@pytest.mark.parametrize("value", [None, b"", b"   "])
def test_missing_header(value: bytes | None) -> None:
    with pytest.raises(AuthenticationError) as caught:
        authority().authenticate(value)
    assert caught.value.code == "token_missing" and caught.value.status == 401
    assert "Authorization: Bearer <token>" in str(caught.value)
    assert "tmws token create" in str(caught.value)


@pytest.mark.parametrize("value", [b"Basic YWdlbnQ6cHc=", b"Token abc", b"eyJhbGciOi.x.y"])
def test_wrong_scheme(value: bytes) -> None:
    with pytest.raises(AuthenticationError) as caught:
        authority().authenticate(value)
    assert caught.value.code == "token_scheme"
    assert value.decode() not in str(caught.value)


def test_non_ascii_token() -> None:
    with pytest.raises(AuthenticationError) as caught:
        authority().authenticate("Bearer é.x.y".encode())
    assert caught.value.code == "token_invalid"


def test_messages_never_contain_the_secret_or_the_token(clock: Clock) -> None:
    auth = authority(clock)
    good = auth.create("a", ["execute"], expires_minutes=1)
    header, payload, signature = good.split(".")
    bad_tokens = [
        f"{header}.{payload}.{signature[:-2]}AA",
        f"{header}.{payload[:-3]}.{signature}",
        TokenAuthority(OTHER_SECRET, 60, clock=clock).create("a", ["execute"]),
        hand_made({"alg": "none"}, claims(), secret=None),
        hand_made({"alg": "RS256"}, claims()),
        jwt.encode(claims(scope="bogus"), SECRET, algorithm="HS256"),
    ]
    messages: list[str] = []
    for token in bad_tokens:
        with pytest.raises(AuthenticationError) as caught:
            auth.authenticate(b"Bearer " + token.encode())
        messages.append(str(caught.value))
        assert token not in messages[-1]
    auth.verify(good)
    clock.now = START + 3600
    with pytest.raises(AuthenticationError) as caught:
        auth.verify(good)
    messages.append(str(caught.value))
    for message in messages:
        assert SECRET not in message and OTHER_SECRET not in message
        assert good not in message and signature not in message and payload not in message
