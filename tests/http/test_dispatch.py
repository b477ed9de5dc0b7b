"""The HTTP dispatcher: exact paths, templates, 404 and 405 with Allow."""

from __future__ import annotations

import pytest

from tmws.http.asgi import HTTPError, Request, Response
from tmws.http.dispatch import Dispatcher, Route
from tmws.http.routes import DISPATCHER, ROUTES


async def _endpoint(engine: object, request: Request) -> Response:
    return Response(200, b"{}")


def _dispatcher() -> Dispatcher:
    return Dispatcher([
        Route("GET", "/items", _endpoint, "list"),
        Route("POST", "/items/reload", _endpoint, "reload"),
        Route("GET", "/items/{name}", _endpoint, "get"),
        Route("DELETE", "/items/{name}", _endpoint, "delete"),
    ])


def test_exact_path() -> None:
    route, params = _dispatcher().resolve("GET", "/items")
    assert route.summary == "list" and params == {}


def test_template_binds_parameter() -> None:
    route, params = _dispatcher().resolve("DELETE", "/items/abc")
    assert route.summary == "delete" and params == {"name": "abc"}


def test_exact_path_wins_per_method_only() -> None:
    dispatcher = _dispatcher()
    assert dispatcher.resolve("POST", "/items/reload")[0].summary == "reload"
    route, params = dispatcher.resolve("GET", "/items/reload")
    assert route.summary == "get" and params == {"name": "reload"}


@pytest.mark.parametrize("path", ["/nope", "/items/a/b", "/items/"])
def test_unknown_path_is_404(path: str) -> None:
    with pytest.raises(HTTPError) as caught:
        _dispatcher().resolve("GET", path)
    assert caught.value.status == 404


def test_wrong_method_is_405_with_allow() -> None:
    with pytest.raises(HTTPError) as caught:
        _dispatcher().resolve("PUT", "/items/x")
    assert caught.value.status == 405
    assert (b"allow", b"GET, DELETE") in caught.value.headers


def test_every_api_route_resolves() -> None:
    for route in ROUTES:
        path = route.path.replace("{name}", "some_pattern").replace("{id}", "12")
        assert DISPATCHER.resolve(route.method, path)[0] is route
