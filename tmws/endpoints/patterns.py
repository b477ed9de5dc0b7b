"""The pattern library over HTTP: list, read, register, delete, reload, evaluate routing.

Every change is all or nothing: a rejected regex or an unknown handler leaves the
registry exactly as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from tmws.embeddings import EmbeddingError
from tmws.endpoints._common import actor, decode, encoder
from tmws.errors import InvalidRequestError, PatternConfigError, PatternError
from tmws.evaluation import labelled
from tmws.http import HTTPError, Request, Response
from tmws.models import PatternDefinition, PatternType
from tmws.schemas import EvaluationRequest, PatternList, PatternRegistration, PatternReload

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["delete_pattern", "evaluate_patterns", "get_pattern", "list_patterns",
           "register_pattern", "reload_patterns"]

_registration_decoder: Final = msgspec.json.Decoder(PatternRegistration)
_evaluation_decoder: Final = msgspec.json.Decoder(EvaluationRequest)
_TYPES: Final = ", ".join(t.value for t in PatternType)


def _propagation(engine: PatternExecutionEngine) -> str:
    return "redis" if engine.settings.redis_url else "this process"


async def list_patterns(engine: PatternExecutionEngine, request: Request) -> Response:
    wanted = request.query_params().get("type")
    pattern_type = None
    if wanted:
        try:
            pattern_type = PatternType(wanted)
        except ValueError:
            raise HTTPError(422, "validation_error",
                            f"unknown pattern type {wanted!r}; use one of: {_TYPES} - at "
                            "`?type`") from None
    patterns = engine.registry.patterns(pattern_type)
    return Response(200, encoder.encode(
        PatternList(patterns, len(patterns), engine.registry.fingerprint)))


def _pattern_or_404(engine: PatternExecutionEngine, name: str) -> PatternDefinition:
    pattern = engine.registry.get(name)
    if pattern is None:
        raise HTTPError(404, "pattern_not_found",
                        f"no pattern named {name!r}; GET /api/v1/patterns lists them")
    return pattern


async def get_pattern(engine: PatternExecutionEngine, request: Request) -> Response:
    return Response(200, encoder.encode(_pattern_or_404(engine, request.path_params["name"])))


async def register_pattern(engine: PatternExecutionEngine, request: Request) -> Response:
    body = decode(_registration_decoder, await request.json_body())
    config = msgspec.structs.asdict(body)
    replace = config.pop("replace")
    who = actor(request)
    try:
        pattern = PatternDefinition.from_config(config, source="request")
        if pattern.handler is not None and pattern.handler not in engine.handlers:
            raise PatternConfigError(
                f"unknown handler {pattern.handler!r}; bound handlers: "
                f"{', '.join(sorted(engine.handlers))}", pattern=pattern.name)
        if pattern.name in engine.registry and not replace:
            raise HTTPError(409, "pattern_exists",
                            f"a pattern named {pattern.name!r} is already registered; send "
                            "\"replace\": true to replace it")
        engine.registry.register(pattern, replace=replace)  # compiles first; all or nothing
    except PatternError as exc:
        engine.audit.record(who, "pattern.register", target=body.name, outcome="invalid_pattern")
        raise HTTPError(422, "invalid_pattern", str(exc)) from None
    engine.audit.record(who, "pattern.register", target=pattern.name, outcome="success",
                        detail={"replace": replace, "pattern_type": pattern.pattern_type.value})
    await engine.router.settled()  # its examples count in stage 2 once this returns
    return Response(201, encoder.encode(pattern),
                    [(b"location", f"/api/v1/patterns/{pattern.name}".encode())])


async def delete_pattern(engine: PatternExecutionEngine, request: Request) -> Response:
    name = request.path_params["name"]
    _pattern_or_404(engine, name)
    try:
        removed = engine.registry.unregister(name)
    except KeyError:  # removed concurrently by another request
        raise HTTPError(404, "pattern_not_found", f"no pattern named {name!r}") from None
    engine.audit.record(actor(request), "pattern.delete", target=name, outcome="success")
    await engine.router.settled()
    return Response(200, encoder.encode(removed))


async def reload_patterns(engine: PatternExecutionEngine, request: Request) -> Response:
    source = engine.settings.pattern_config or "the default library"
    who = actor(request)
    try:
        count = await engine.reload_patterns()
    except PatternError as exc:
        engine.audit.record(who, "pattern.reload", target=source, outcome="invalid_pattern")
        raise HTTPError(422, "invalid_pattern_file",
                        f"{exc}; the previous pattern set is still in use") from None
    engine.audit.record(who, "pattern.reload", target=source, outcome="success",
                        detail={"patterns": count})
    return Response(200, encoder.encode(PatternReload(
        count, engine.registry.fingerprint, engine.library.source, _propagation(engine))))


async def evaluate_patterns(engine: PatternExecutionEngine, request: Request) -> Response:
    """Route labelled queries (nothing runs) and score the routing, as ``tmws patterns
    eval`` does with a file."""
    body = decode(_evaluation_decoder, await request.json_body())
    try:
        items = [labelled(item.expected, item.query.strip(), position, engine.registry,
                          where=f"`$.labelled[{position}].expected`: ")
                 for position, item in enumerate(body.labelled)]
    except InvalidRequestError as exc:
        raise HTTPError(422, "unknown_label", str(exc)) from None
    try:
        report = await engine.evaluate(items, mode=body.execution_mode,
                                       min_score=body.min_score, min_margin=body.min_margin)
    except EmbeddingError as exc:
        raise HTTPError(503, "embedding_unavailable", str(exc)) from None
    return Response(200, encoder.encode(report))
