"""Checks a request passes after routing and before its endpoint: authentication with
scopes, then rate limiting. Each is built only when enabled, so a disabled one costs
nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tmws.auth import TokenAuthority
from tmws.http.asgi import PRINCIPAL_KEY, HTTPError, Request, header
from tmws.http.dispatch import Route
from tmws.ratelimit import RateLimiter

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["AuthGuard", "Guard", "RateLimitGuard", "build_guards"]


class Guard(Protocol):
    async def check(self, route: Route, request: Request) -> list[tuple[bytes, bytes]]:
        """Raise to refuse the request; return headers to add to its response."""
        ...

    async def close(self) -> None: ...


class AuthGuard:
    """Bearer JWT on every route with a scope; the token's subject becomes the namespace."""

    def __init__(self, authority: TokenAuthority, *,
                 scopes: dict[str, str] | None = None) -> None:
        self.authority = authority
        # Per-deployment scopes by path, over the route table's (e.g. /metrics behind a token).
        self._scopes = scopes or {}

    async def check(self, route: Route, request: Request) -> list[tuple[bytes, bytes]]:
        scope = self._scopes.get(route.path, route.scope)
        if scope is None:
            return []
        principal = self.authority.authenticate(header(request.scope, b"authorization"))
        if scope:
            principal.require(scope)
        request.scope[PRINCIPAL_KEY] = principal
        return []

    async def close(self) -> None:
        return None


class RateLimitGuard:
    """Per token subject (per client address with auth off), shared through Redis."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def check(self, route: Route, request: Request) -> list[tuple[bytes, bytes]]:
        if not route.rate_limited:
            return []
        principal = request.principal
        if principal is not None:
            key = f"ns:{principal.namespace}"
        else:
            client = request.scope.get("client")
            key = f"ip:{client[0] if client else 'unknown'}"
        decision = await self.limiter.hit(key)
        headers = self.limiter.headers(decision)
        if not decision.allowed:
            raise HTTPError(429, "rate_limited",
                            f"more than {decision.limit} requests in "
                            f"{self.limiter.period} s; retry after the Retry-After seconds "
                            "(TMWS_RATE_LIMIT_REQUESTS / TMWS_RATE_LIMIT_PERIOD)", headers)
        return headers

    async def close(self) -> None:
        await self.limiter.close()


def build_guards(engine: PatternExecutionEngine) -> list[Guard]:
    """The guards the settings enable, in the order they run."""
    settings = engine.settings
    guards: list[Guard] = []
    if settings.auth_enabled:
        guards.append(AuthGuard(
            TokenAuthority.from_settings(settings),
            scopes={"/metrics": "metrics:read"} if settings.metrics_require_token else None))
    if settings.rate_limit_enabled:
        guards.append(RateLimitGuard(RateLimiter.from_settings(settings, cache=engine.cache)))
    return guards
