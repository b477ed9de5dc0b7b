"""The ASGI application served by Granian.

Pure ASGI rather than a framework: a cached execute costs ~50 µs of server CPU on this
stack, and when the stack was chosen a bare ASGI+msgspec endpoint did ~25k req/s under wrk
on this machine where Starlette did ~21k and Litestar ~12k. Routing is a dict lookup,
guards run only when enabled, and every body is msgspec in and out.
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Final

from tmws._request_context import RequestIds, request_id
from tmws.config import Settings
from tmws.engine import PatternExecutionEngine, create_pattern_execution_engine
from tmws.http.asgi import ASGIApp, HTTPError, Receive, Request, Scope, Send, error_body, send_json
from tmws.http.failure import failure
from tmws.http.guards import Guard, build_guards
from tmws.http.routes import DISPATCHER
from tmws.metrics import worker_exited

if TYPE_CHECKING:
    from tmws.mcp.http import McpEndpoint

__all__ = ["TmwsApp", "create_app"]

logger = logging.getLogger("tmws.http.app")

_NOT_READY: Final = error_body("not_ready", "the service is starting or stopping")


class TmwsApp:
    """Lifespan opens the engine; requests are routed, guarded, then answered."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self.engine: PatternExecutionEngine | None = None
        self._guards: list[Guard] = []
        self._request_ids = RequestIds()
        self._mcp: McpEndpoint | None = None  # /mcp, set up by the lifespan
        self._lifespan_stack = AsyncExitStack()

    def attach(self, engine: PatternExecutionEngine) -> None:
        """Serve an engine built elsewhere (tests, or an application embedding tmws)."""
        self.engine = engine
        self._guards = build_guards(engine)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_id = self._request_ids.identify(scope)
        token = request_id.set(raw_id.decode())
        try:
            await self._answer(scope, receive, send, [(b"x-request-id", raw_id)])
        finally:
            request_id.reset(token)

    async def _answer(self, scope: Scope, receive: Receive, send: Send,
                      extra: list[tuple[bytes, bytes]]) -> None:
        engine = self.engine
        if engine is None:
            await send_json(send, 503, _NOT_READY, extra)
            return
        try:
            if scope["path"] == "/mcp" and self._mcp is not None:
                await self._mcp.handle(scope, receive, send, self._guards)
                return
            route, params = DISPATCHER.resolve(scope["method"], scope["path"])
            settings = engine.settings
            request = Request(scope, receive, settings.max_body_bytes, params,
                              settings.max_json_depth)
            for guard in self._guards:
                extra += await guard.check(route, request)
            response = await route.endpoint(engine, request)
        except HTTPError as exc:
            await send_json(send, exc.status, error_body(exc.code, exc.message),
                            exc.headers + extra)
            return
        except Exception as exc:
            status, body, headers = failure(exc, scope["path"])
            await send_json(send, status, body, headers + extra if headers else extra)
            return
        headers = [(b"content-type", response.content_type)]
        if response.headers:
            headers += response.headers
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers + extra if extra else headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.attach(await create_pattern_execution_engine(self._settings))
                    await self._start_mcp()
                except Exception as exc:
                    logger.error("start-up failed: %s", exc)
                    await self._lifespan_stack.aclose()
                    self._mcp = None
                    if self.engine is not None:
                        await self.engine.close()
                        self.engine = None
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Start-up objects live as long as the process: keep them out of every
                # later garbage-collection pass. Requests allocate few cycles, so collect
                # the young generation less often: at the default threshold collections
                # cost ~8 us per cache hit (bench/README.md), for a little more memory.
                gc.freeze()
                gc.set_threshold(20_000, 20, 20)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.engine is not None:
                    engine, self.engine = self.engine, None
                    self._mcp = None
                    await self._lifespan_stack.aclose()
                    for guard in self._guards:
                        await guard.close()
                    await engine.close()
                worker_exited(os.getpid())
                await send({"type": "lifespan.shutdown.complete"})
                return


    async def _start_mcp(self) -> None:
        """The MCP endpoint and the SDK's session manager, for the life of the worker
        (imported here: a process that never serves MCP does not load the SDK)."""
        from tmws.mcp.http import McpEndpoint

        assert self.engine is not None
        endpoint = McpEndpoint(self.engine)
        await self._lifespan_stack.enter_async_context(endpoint.running())
        self._mcp = endpoint


def create_app(settings: Settings | None = None) -> ASGIApp:
    """The application factory Granian calls in each worker."""
    return TmwsApp(settings)
