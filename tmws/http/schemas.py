"""Request and response bodies of the HTTP API (msgspec; /openapi.json is generated from them).

Request bodies reject unknown fields: a misspelt option is an error, not silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from tmws._pattern_sync import Propagation
from tmws.inputs import (
    Days,
    Importance,
    Limit,
    MemoryInput,
    Namespace,
    SearchText,
    Tag,
)
from tmws.memory import MemoryRecord
from tmws.models import ExecutionMode, PatternDefinition, PatternType

__all__ = [
    "CacheCleared",
    "DeletedMemory",
    "EvaluationRequest",
    "ExecuteRequest",
    "Health",
    "LabelledQuery",
    "MemoryCreate",
    "MemoryList",
    "MemorySearch",
    "PatternList",
    "PatternRegistration",
    "PatternReload",
    "PatternReloadRequest",
    "Readiness",
    "RouteRequest",
]

Query = Annotated[str, msgspec.Meta(min_length=1, description="The natural-language query.")]
Mode = Annotated[ExecutionMode, msgspec.Meta(description="Default: TMWS_PATTERN_DEFAULT_MODE.")]


class ExecuteRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/execute``."""

    query: Query
    execution_mode: Mode | None = None
    context: dict[str, Any] | None = None
    use_cache: bool = True


class RouteRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/route``."""

    query: Query
    execution_mode: Mode | None = None
    context: dict[str, Any] | None = None


class LabelledQuery(msgspec.Struct, forbid_unknown_fields=True):
    """One line of a labelled file: the pattern a query should reach, or ``NONE``."""

    expected: Annotated[str, msgspec.Meta(
        min_length=1, description="A registered pattern name, or NONE (must abstain).")]
    query: Query


class EvaluationRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of ``POST /api/v1/patterns/eval`` (what ``tmws patterns eval`` reads from a
    file); in the answer, ``misroutes[].line`` is the item's index in ``labelled``."""

    labelled: Annotated[list[LabelledQuery], msgspec.Meta(min_length=1)]
    execution_mode: Mode | None = None
    min_score: Annotated[float, msgspec.Meta(
        gt=0.0, le=1.0, description="Default: TMWS_ROUTER_MIN_SCORE.")] | None = None
    min_margin: Annotated[float, msgspec.Meta(
        ge=0.0, lt=1.0, description="Default: TMWS_ROUTER_MIN_MARGIN.")] | None = None


class PatternRegistration(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of ``POST /api/v1/patterns``: a pattern as written in the pattern file."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128,
                                      pattern=r"^[A-Za-z0-9_-]+$")]
    pattern_type: PatternType
    trigger_pattern: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]
    cost_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    priority: int = 0
    cache_ttl: Annotated[int, msgspec.Meta(ge=0)] | None = None
    handler: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    examples: Annotated[list[Annotated[str, msgspec.Meta(max_length=2000)]],
                        msgspec.Meta(max_length=200)] = msgspec.field(default_factory=list)
    min_score: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    replace: bool = msgspec.field(default=False)  # replace a pattern of the same name


class PatternList(msgspec.Struct):
    patterns: list[PatternDefinition]
    count: int
    fingerprint: str
    # The group's version this worker runs (TMWS_PATTERN_SYNC_GROUP).
    version: int | None


class PatternReloadRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Optional body of ``POST /api/v1/patterns/reload``."""

    allow_empty: bool = msgspec.field(default=False)  # a file without patterns is refused


class PatternReload(msgspec.Struct):
    patterns: int
    fingerprint: str
    source: str
    version: int
    # How far the new set has reached: every live instance of the group, or how many.
    propagation: Propagation


class CacheCleared(msgspec.Struct):
    redis_deleted: int  # result entries removed from Redis (shared by every instance)
    # In-process caches: this worker's is empty now; the others' entries age out within
    # this many seconds (TMWS_CACHE_LOCAL_TTL).
    local_ttl_seconds: float


class MemoryCreate(MemoryInput, forbid_unknown_fields=True, kw_only=True):
    """Body of ``POST /api/v1/memories``: a memory (:class:`tmws.inputs.MemoryInput`) and,
    with auth off, the namespace to store it in."""

    namespace: Namespace | None = None


class MemorySearch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of ``POST /api/v1/memories/search``.

    With ``query``: hybrid recall (full text + vectors) or ``method="vector"`` kNN. Without
    it: by ``tags``, else by ``min_importance``, else the most recent.
    """

    query: SearchText | None = None
    method: Literal["hybrid", "vector"] = "hybrid"
    tags: Annotated[list[Tag], msgspec.Meta(max_length=64)] | None = None
    min_importance: Importance | None = None
    days: Days | None = None
    limit: Limit = 10
    namespace: Namespace | None = None


class MemoryList(msgspec.Struct):
    results: list[MemoryRecord]
    count: int


class DeletedMemory(msgspec.Struct):
    deleted: int


class Health(msgspec.Struct):
    status: str
    version: str


class Readiness(msgspec.Struct, omit_defaults=True):
    """The health check's booleans (deploy/README.md, Monitoring and Alerts); ``ready`` is
    what probes act on."""

    pattern_engine: bool
    database: bool
    redis: bool
    healthy: bool
    ready: bool
    database_error: str | None = None
    redis_error: str | None = None
