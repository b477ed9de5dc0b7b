"""The ASGI application served by Granian."""

from __future__ import annotations

import gc
import logging
import os
from typing import Final

from tmws.config import Settings
from tmws.engine import PatternExecutionEngine, create_pattern_execution_engine
from tmws.errors import TmwsError
from tmws.http import HTTPError, Receive, Request, Scope, Send, error_body, send_json
from tmws.metrics import worker_exited
from tmws.routes import CONTENT_TYPES, ROUTES

__all__ = ["TmwsApp", "create_app"]

logger = logging.getLogger("tmws.app")

_NOT_READY: Final = error_body("not_ready", "the service is starting or stopping")


class TmwsApp:
    """Pure ASGI: lifespan opens the engine; requests dispatch on exact paths."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self.engine: PatternExecutionEngine | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = self.engine
        if engine is None:
            await send_json(send, 503, _NOT_READY)
            return
        methods = ROUTES.get(scope["path"])
        try:
            if methods is None:
                raise HTTPError(404, "not_found", f"no route {scope['path']}; see the README "
                                "for the API")
            handler = methods.get(scope["method"])
            if handler is None:
                allowed = ", ".join(methods)
                raise HTTPError(405, "method_not_allowed",
                                f"{scope['method']} is not allowed on {scope['path']}; "
                                f"use {allowed}", [(b"allow", allowed.encode())])
            request = Request(scope, receive, engine.settings.max_body_bytes)
            status, body = await handler(engine, request)
            content_type = CONTENT_TYPES.get(scope["path"])
        except HTTPError as exc:
            await send_json(send, exc.status, error_body(exc.code, exc.message), exc.headers)
            return
        except TmwsError as exc:
            logger.warning("request failed: %s", exc)
            await send_json(send, 503, error_body("unavailable", str(exc)))
            return
        except Exception:
            logger.exception("unhandled error on %s", scope["path"])
            await send_json(send, 500, error_body("internal_error", "internal error; see the "
                                                  "server log"))
            return
        if content_type is None:
            await send_json(send, status, body)
        else:
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", content_type)]})
            await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.engine = await create_pattern_execution_engine(self._settings)
                except Exception as exc:
                    logger.error("start-up failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Start-up objects live as long as the process: keep them out of every
                # later garbage-collection pass.
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.engine is not None:
                    engine, self.engine = self.engine, None
                    await engine.close()
                worker_exited(os.getpid())
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings | None = None) -> TmwsApp:
    """The application factory Granian calls in each worker."""
    return TmwsApp(settings)
