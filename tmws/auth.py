"""Bearer-token authentication: HS256 JWTs minted and verified by tmws itself.

A token names a namespace (``sub``) and the scopes it grants (``scope``, space-separated as
in OAuth 2). :class:`TokenAuthority` mints tokens (``tmws token create``) and turns an
``Authorization`` header into a :class:`Principal`; every failure is an
:class:`~tmws.errors.AuthenticationError` (401) whose ``code`` is stable and whose message
says what to fix, and a missing scope is a :class:`~tmws.errors.PermissionDeniedError` (403).
No message ever contains the token or the secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, Final

import jwt
import msgspec

from tmws.config import MIN_SECRET_LENGTH, Settings
from tmws.errors import AuthenticationError, ConfigError, PermissionDeniedError
from tmws.inputs import valid_namespace

__all__ = [
    "ALGORITHM",
    "DEFAULT_SCOPES",
    "ISSUER",
    "LEEWAY_SECONDS",
    "SCOPES",
    "Principal",
    "TokenAuthority",
    "parse_scopes",
]

SCOPES: Final = ("execute", "memories:read", "memories:write", "patterns:admin", "metrics:read")
# What `tmws token create` grants when --scopes is not given: an ordinary agent.
DEFAULT_SCOPES: Final = ("execute", "memories:read", "memories:write")
ALGORITHM: Final = "HS256"
ISSUER: Final = "tmws"
# Clock skew tolerated between the minting host and the verifying one.
LEEWAY_SECONDS: Final = 5
_CACHE_SIZE: Final = 4096
_SCOPE_SET: Final = frozenset(SCOPES)
_VALID_SCOPES: Final = ", ".join(SCOPES)
# Algorithm names safe to repeat in an error message; anything else is attacker text.
_KNOWN_ALGORITHMS: Final = frozenset({
    "none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES256K", "ES384",
    "ES512", "PS256", "PS384", "PS512", "EdDSA", "Ed25519", "Ed448",
})
# Time claims are checked here against the injectable clock, not by PyJWT (which reads the
# wall clock), and sub/jti types here too so they fail as token_claims; PyJWT checks the
# signature, the algorithm, the issuer and that the required claims are present.
_DECODER: Final = jwt.PyJWT({
    "require": ["exp", "iat", "sub", "iss"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_sub": False,
    "verify_jti": False,
})


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the token's namespace and the scopes it grants."""

    namespace: str
    scopes: frozenset[str]
    token_id: str | None = None
    expires_at: float | None = None

    @classmethod
    def unrestricted(cls, namespace: str) -> Principal:
        """Every scope, no expiry: the caller when authentication is off."""
        return cls(namespace, _SCOPE_SET)

    def require(self, scope: str) -> None:
        """Raise PermissionDeniedError unless this principal holds ``scope``."""
        if scope in self.scopes:
            return
        if scope not in _SCOPE_SET:  # a typo in the caller, not the client's fault
            raise ValueError(f"unknown scope {scope!r}; valid scopes: {_VALID_SCOPES}")
        raise PermissionDeniedError(
            "insufficient_scope",
            f"this token lacks the {scope} scope; "
            f"mint one with `tmws token create --scopes {scope}`",
        )


def parse_scopes(text: str) -> tuple[str, ...]:
    """``"execute,memories:read"`` or ``"execute memories:read"`` → known scopes, in order.

    Raises ValueError naming an unknown scope and listing the valid ones.
    """
    return _canonical_scopes(text.replace(",", " ").split())


def _canonical_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    wanted = set(scopes)
    unknown = sorted(wanted - _SCOPE_SET)
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; valid scopes: {_VALID_SCOPES}")
    return tuple(scope for scope in SCOPES if scope in wanted)


def _iso(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:.0f} (Unix time)"


def _number(value: object) -> bool:
    # bool is an int subclass; NaN/inf would make every comparison meaningless; an int too
    # large for a float (JSON allows it) would overflow isfinite.
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _unverified_algorithm(token: str) -> object:
    """The header's ``alg`` (unverified), so a wrong algorithm gets its own message.

    Decoded by hand rather than with PyJWT so that an ``alg`` PyJWT does not know (or
    ``none``) still yields the specific error instead of a generic one.
    """
    header_segment = token.split(".", 1)[0]
    try:
        raw = base64.urlsafe_b64decode(header_segment + "=" * (-len(header_segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise _invalid() from None
    if not isinstance(header, dict):
        raise _invalid()
    return header.get("alg")


def _invalid() -> AuthenticationError:
    return AuthenticationError(
        "token_invalid",
        "the token is malformed or its signature does not match (was it copied whole, and "
        "minted with this server's TMWS_SECRET_KEY?); mint a new one with `tmws token create`",
    )


def _claims(problem: str) -> AuthenticationError:
    return AuthenticationError(
        "token_claims", f"the token {problem}; mint a new one with `tmws token create`"
    )


class TokenAuthority:
    """Mints and verifies tokens with one HS256 secret.

    Verified tokens are cached (bounded, token string → Principal) because HMAC plus JSON
    decoding costs tens of microseconds and the same few tokens arrive on every request;
    a cache hit still checks expiry against the clock.
    """

    def __init__(self, secret: str, expire_minutes: int, *,
                 clock: Callable[[], float] = time.time, cache_size: int = _CACHE_SIZE) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"the secret must be at least {MIN_SECRET_LENGTH} characters")
        if expire_minutes < 1:
            raise ValueError(f"expire_minutes must be at least 1 (got {expire_minutes})")
        self._secret = secret
        self._expire_minutes = expire_minutes
        self._clock = clock
        self._cache_size = max(0, cache_size)
        # token → (deadline incl. leeway, principal). OrderedDict for popitem(last=False):
        # one atomic call evicts the oldest entry, safe even if threads share the authority.
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    def __repr__(self) -> str:  # never show the secret
        return f"TokenAuthority(expire_minutes={self._expire_minutes}, secret=<redacted>)"

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuthority:
        """The authority for TMWS_SECRET_KEY and TMWS_TOKEN_EXPIRE_MINUTES."""
        variable = settings.env_name("secret_key")
        secret = settings.secret_key
        if not secret:
            raise ConfigError(variable, f"is not set; tokens need a secret of at least "
                              f"{MIN_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`)")
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(variable, f"is {len(secret)} characters; tokens need at least "
                              f"{MIN_SECRET_LENGTH} (e.g. `openssl rand -hex 32`)")
        return cls(secret, settings.token_expire_minutes)

    def create(self, namespace: str, scopes: Iterable[str], *,
               expires_minutes: int | None = None) -> str:
        """A signed token for ``namespace`` granting ``scopes``.

        ``scopes`` may also be one comma- or space-separated string. Raises ValueError for
        an invalid namespace, an unknown scope, no scopes, or a non-positive lifetime.
        """
        if not valid_namespace(namespace):
            raise ValueError(
                f"invalid namespace {namespace[:140]!r}: use 1 to 128 characters from "
                "A-Z a-z 0-9 _ . : @ -")
        granted = parse_scopes(scopes) if isinstance(scopes, str) else _canonical_scopes(scopes)
        if not granted:
            raise ValueError(f"at least one scope is required; valid scopes: {_VALID_SCOPES}")
        minutes = self._expire_minutes if expires_minutes is None else expires_minutes
        if minutes < 1:
            raise ValueError(f"the lifetime must be at least 1 minute (got {minutes})")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": namespace,
            "scope": " ".join(granted),
            "iat": now,
            "nbf": now,
            "exp": now + minutes * 60,
            "jti": secrets.token_urlsafe(16),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        """The principal a token stands for; AuthenticationError if it is not usable."""
        cached = self._cache.get(token)
        if cached is not None:
            deadline, principal = cached
            if self._clock() < deadline:
                return principal
            self._cache.pop(token, None)
            raise self._expired(deadline - LEEWAY_SECONDS)
        principal, deadline = self._decode(token)
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                with suppress(KeyError):  # emptied meanwhile by another thread
                    self._cache.popitem(last=False)
            self._cache[token] = (deadline, principal)
        return principal

    def authenticate(self, authorization: bytes | None) -> Principal:
        """The principal for an ASGI ``authorization`` header value (``Bearer <token>``)."""
        if not authorization or not authorization.strip():
            raise AuthenticationError(
                "token_missing",
                "send `Authorization: Bearer <token>`; mint one with `tmws token create`")
        scheme, _, credentials = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            raise AuthenticationError(
                "token_scheme",
                "the Authorization header must use the Bearer scheme: "
                "`Authorization: Bearer <token>`")
        credentials = credentials.strip()
        if not credentials:
            raise AuthenticationError(
                "token_missing",
                "the Bearer token is empty; send `Authorization: Bearer <token>`")
        try:
            token = credentials.decode("ascii")
        except UnicodeDecodeError:
            raise _invalid() from None
        return self.verify(token)

    def _decode(self, token: str) -> tuple[Principal, float]:
        algorithm = _unverified_algorithm(token)
        if algorithm != ALGORITHM:
            known = isinstance(algorithm, str) and algorithm in _KNOWN_ALGORITHMS
            shown = algorithm if known else "an unsupported algorithm"
            raise AuthenticationError(
                "token_algorithm",
                f"the token is signed with {shown}; tmws accepts only {ALGORITHM} tokens "
                "it minted itself (`tmws token create`)")
        try:
            # algorithms pinned: the header never chooses how the signature is checked.
            claims = _DECODER.decode(token, self._secret, algorithms=[ALGORITHM],
                                     issuer=ISSUER)
        except jwt.InvalidAlgorithmError:
            raise AuthenticationError(
                "token_algorithm",
                f"tmws accepts only {ALGORITHM} tokens it minted itself (`tmws token create`)",
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise _claims(f"lacks the {exc.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise _claims(f"was not issued by {ISSUER}") from None
        except jwt.InvalidAudienceError:
            raise _claims("has an aud claim; tmws tokens have none") from None
        except jwt.PyJWTError:  # bad signature, tampered, malformed
            raise _invalid() from None
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> tuple[Principal, float]:
        now = self._clock()
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", claims["iat"])
        if not (_number(exp) and _number(iat) and _number(nbf)):
            raise _claims("has non-numeric exp, iat or nbf claims")
        if now >= exp + LEEWAY_SECONDS:
            raise self._expired(exp)
        if max(iat, nbf) > now + LEEWAY_SECONDS:
            raise AuthenticationError(
                "token_invalid",
                f"the token is not valid before {_iso(max(iat, nbf))}; check that the clocks "
                "of the minting host and this server agree")
        namespace = claims["sub"]
        if not valid_namespace(namespace):
            raise _claims("has an invalid sub (namespace) claim")
        scope = claims.get("scope")
        if not isinstance(scope, str):
            raise _claims("lacks the 'scope' claim (a space-separated string)")
        scopes = frozenset(scope.split())
        unknown = scopes - _SCOPE_SET
        if unknown:
            # Named: scope names come from a validly signed token, i.e. from us.
            raise _claims(f"grants unknown scopes {sorted(unknown)}; valid scopes: "
                          f"{_VALID_SCOPES}")
        jti = claims.get("jti")
        principal = Principal(namespace, scopes, jti if isinstance(jti, str) else None,
                              float(exp))
        return principal, float(exp) + LEEWAY_SECONDS

    @staticmethod
    def _expired(exp: float) -> AuthenticationError:
        return AuthenticationError(
            "token_expired",
            f"the token expired at {_iso(exp)}; mint a new one with `tmws token create`")
