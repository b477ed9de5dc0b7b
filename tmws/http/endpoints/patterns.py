"""The pattern library over HTTP: list, read, register, delete, reload, evaluate routing.

Changes go through the engine's operations: all or nothing (a rejected regex or handler
leaves every instance's set as it was), stored as a new version of the group's set before
they are acknowledged, audited, and answered with how far they have reached
(``x-pattern-set-*`` headers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from tmws.errors import (
    EmbeddingError,
    InvalidRequestError,
    PatternError,
    PatternExistsError,
    PatternNotFoundError,
)
from tmws.evaluation import labelled
from tmws.http.asgi import HTTPError, Request, Response
from tmws.http.endpoints._common import actor, decode, encoder
from tmws.http.schemas import (
    EvaluationRequest,
    PatternList,
    PatternRegistration,
    PatternReload,
    PatternReloadRequest,
)
from tmws.models import PatternDefinition, PatternType

if TYPE_CHECKING:
    from tmws.engine import PatternChange, PatternExecutionEngine

__all__ = ["delete_pattern", "evaluate_patterns", "get_pattern", "list_patterns",
           "register_pattern", "reload_patterns"]

_registration_decoder: Final = msgspec.json.Decoder(PatternRegistration)
_evaluation_decoder: Final = msgspec.json.Decoder(EvaluationRequest)
_reload_decoder: Final = msgspec.json.Decoder(PatternReloadRequest)
_TYPES: Final = ", ".join(t.value for t in PatternType)


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
    registry = engine.registry
    patterns = registry.patterns(pattern_type)
    return Response(200, encoder.encode(
        PatternList(patterns, len(patterns), registry.fingerprint, registry.shared_version)))


def _pattern_or_404(engine: PatternExecutionEngine, name: str) -> PatternDefinition:
    pattern = engine.registry.get(name)
    if pattern is None:
        raise HTTPError(404, "pattern_not_found",
                        f"no pattern named {name!r}; GET /api/v1/patterns lists them")
    return pattern


async def get_pattern(engine: PatternExecutionEngine, request: Request) -> Response:
    return Response(200, encoder.encode(_pattern_or_404(engine, request.path_params["name"])))


def _change_headers(change: PatternChange) -> list[tuple[bytes, bytes]]:
    """Where the change stands: the set's version, and whether every live instance of the
    group runs it yet (they converge within a heartbeat either way)."""
    reach = change.propagation
    return [(b"x-pattern-set-version", str(reach.version).encode()),
            (b"x-pattern-set-instances", f"{reach.applied}/{reach.instances}".encode()),
            (b"x-pattern-set-visible-everywhere",
             b"true" if reach.visible_everywhere else b"false")]


async def register_pattern(engine: PatternExecutionEngine, request: Request) -> Response:
    body = decode(_registration_decoder, await request.json_body())
    config = msgspec.structs.asdict(body)
    replace = config.pop("replace")
    try:
        change = await engine.register_pattern(config, replace=replace, actor=actor(request))
    except PatternExistsError as exc:
        raise HTTPError(409, "pattern_exists", str(exc)) from None
    except PatternError as exc:
        raise HTTPError(422, "invalid_pattern", str(exc)) from None
    assert change.pattern is not None
    return Response(201, encoder.encode(change.pattern),
                    [(b"location", f"/api/v1/patterns/{change.pattern.name}".encode()),
                     *_change_headers(change)])


async def delete_pattern(engine: PatternExecutionEngine, request: Request) -> Response:
    name = request.path_params["name"]
    try:
        change = await engine.unregister_pattern(name, actor=actor(request))
    except PatternNotFoundError as exc:
        raise HTTPError(404, "pattern_not_found", str(exc)) from None
    return Response(200, encoder.encode(change.pattern), _change_headers(change))


async def reload_patterns(engine: PatternExecutionEngine, request: Request) -> Response:
    raw = await request.json_body()
    options = decode(_reload_decoder, raw) if raw.strip() else PatternReloadRequest()
    try:
        change = await engine.reload_patterns(allow_empty=options.allow_empty or None,
                                              actor=actor(request))
    except PatternError as exc:
        raise HTTPError(422, "invalid_pattern_file",
                        f"{exc}; the previous pattern set is still in use") from None
    return Response(200, encoder.encode(PatternReload(
        change.patterns, change.propagation.fingerprint, engine.library.source,
        change.propagation.version, change.propagation)), _change_headers(change))


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
