"""``POST /api/v1/execute`` and ``POST /api/v1/route``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from tmws.errors import InvalidRequestError
from tmws.http.asgi import HTTPError, Request, Response, error_body
from tmws.http.endpoints._common import check_query, decode, encoder, namespace_for
from tmws.http.schemas import ExecuteRequest, RouteRequest

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["execute", "route"]

_execute_decoder: Final = msgspec.json.Decoder(ExecuteRequest)
_route_decoder: Final = msgspec.json.Decoder(RouteRequest)


async def execute(engine: PatternExecutionEngine, request: Request) -> Response:
    body = decode(_execute_decoder, await request.json_body())
    check_query(engine, body.query)
    context = body.context
    requested = context.get("namespace") if context else None
    namespace = namespace_for(request, requested, "`$.context.namespace`")
    if request.principal is not None and requested != namespace:
        context = {**(context or {}), "namespace": namespace}
    principal = request.principal
    authorize = None
    if principal is not None:
        def authorize(scopes: frozenset[str]) -> None:
            # The execute scope runs patterns; what the handler does needs its scopes too.
            for scope in sorted(scopes):
                principal.require(scope)
    try:
        result = await engine.execute(body.query, body.execution_mode, context, body.use_cache,
                                      authorize=authorize)
    except InvalidRequestError as exc:
        raise HTTPError(422, "invalid_request", str(exc)) from None
    code = result.error_code
    # A failure that is the service's fault or a dependency's, not an answer: its status.
    if code is not None and code.status != 200:
        retry = result.metadata.get("retry_after")
        return Response(code.status, error_body(code, result.error or "", result),
                        [(b"retry-after", str(retry).encode())] if retry else None)
    return Response(200, encoder.encode(result))


async def route(engine: PatternExecutionEngine, request: Request) -> Response:
    body = decode(_route_decoder, await request.json_body())
    check_query(engine, body.query)
    context = body.context
    namespace = namespace_for(request, context.get("namespace") if context else None,
                              "`$.context.namespace`")
    if context is not None:
        context = {**context, "namespace": namespace}
    mode = body.execution_mode or engine.settings.pattern_default_mode
    decision = await engine.router.route(body.query.strip(), mode, context)
    return Response(200, encoder.encode(decision))
