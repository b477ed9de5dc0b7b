"""HTTP dispatch: a route and its dispatcher (exact paths in a dict, ``{param}`` templates
matched by segment). Pattern routing — which pattern answers a query — is :mod:`tmws.router`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from tmws.http.asgi import HTTPError, Request, Response

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["Dispatcher", "Endpoint", "Route"]

Endpoint = Callable[["PatternExecutionEngine", Request], Awaitable[Response]]


class Route(NamedTuple):
    """One operation. The metadata feeds /openapi.json, so the docs cannot drift."""

    method: str
    path: str  # "/api/v1/patterns/{name}"
    endpoint: Endpoint
    summary: str
    # Scope a token needs (tmws.auth.SCOPES); "" means any valid token; None means public.
    scope: str | None = ""
    request_type: Any = None  # msgspec type of the JSON body
    response_type: Any = None  # msgspec type of the 2xx body
    status: int = 200
    errors: tuple[int, ...] = ()
    content_type: str = "application/json"
    # Query parameters: (name, description, allowed values or () for any string).
    query: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    rate_limited: bool = True
    body_required: bool = True  # False: an empty body means the request type's defaults
    # Headers of the 2xx answer: (name, JSON schema type, description).
    response_headers: tuple[tuple[str, str, str], ...] = ()


class _Template(NamedTuple):
    segments: tuple[str, ...]  # literal segments, or "{name}" for a parameter
    routes: dict[str, Route]  # by method


class Dispatcher:
    """Resolves (method, path) to a route and its path parameters.

    Exact paths win over templates, per method: ``GET /api/v1/patterns/reload`` reads a
    pattern called ``reload`` while ``POST`` reloads the library.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self._exact: dict[str, dict[str, Route]] = {}
        self._templates: list[_Template] = []
        for route in routes:
            if "{" not in route.path:
                self._exact.setdefault(route.path, {})[route.method] = route
                continue
            segments = tuple(route.path.strip("/").split("/"))
            for template in self._templates:
                if template.segments == segments:
                    template.routes[route.method] = route
                    break
            else:
                self._templates.append(_Template(segments, {route.method: route}))

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for this request, or HTTPError 404/405 saying what exists."""
        allowed: list[str] = []
        exact = self._exact.get(path)
        if exact is not None:
            route = exact.get(method)
            if route is not None:
                return route, {}
            allowed.extend(exact)
        parts = path.strip("/").split("/")
        for template in self._templates:
            params = _bind(template.segments, parts)
            if params is None:
                continue
            route = template.routes.get(method)
            if route is not None:
                return route, params
            allowed.extend(template.routes)
        if allowed:
            listed = ", ".join(dict.fromkeys(allowed))
            raise HTTPError(405, "method_not_allowed",
                            f"{method} is not allowed on {path}; use {listed}",
                            [(b"allow", listed.encode())])
        raise HTTPError(404, "not_found", f"no route {path}; GET /openapi.json lists the API")


def _bind(segments: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    if len(segments) != len(parts):
        return None
    params: dict[str, str] = {}
    for segment, part in zip(segments, parts, strict=True):
        if segment.startswith("{"):
            if not part:
                return None
            params[segment[1:-1]] = part
        elif segment != part:
            return None
    return params
