"""``GET /api/v1/verify``: the checks of ``tmws verify`` against this running instance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from tmws.http.asgi import HTTPError, Request, Response
from tmws.http.endpoints._common import actor, encoder

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["verify"]

_FLAGS: Final = {"true": True, "false": False}


async def verify(engine: PatternExecutionEngine, request: Request) -> Response:
    """200 with the report whatever it finds (its ``status`` and ``exit_code`` say ok, warn
    or fail): the request succeeded, the installation may not have. Runs on this worker's
    pool, cache and router; the executions are this engine's, audited and counted."""
    raw = request.query_params().get("execute", "true")
    execute = _FLAGS.get(raw)
    if execute is None:
        raise HTTPError(422, "invalid_request",
                        f"execute must be true or false (got {raw[:40]!r}) - at `?execute`")
    report = await engine.verify(execute=execute, actor=actor(request))
    return Response(200, encoder.encode(report))
