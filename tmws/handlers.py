"""Pattern handlers: the work behind each pattern.

A pattern runs the handler named by its ``handler`` field, else the handler named like
the pattern, else its type's default. Tool patterns without a bound handler hand the
routing decision back to the caller: tmws never runs shell commands.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec

from tmws.errors import InvalidRequestError
from tmws.memory import DEFAULT_NAMESPACE, VISIBILITIES, topic_words
from tmws.models import ExecutionMode, PatternDefinition, PatternType, RoutingDecision

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["HANDLERS", "WRITE_HANDLERS", "Handler", "HandlerContext", "resolve_handler"]


@dataclass(frozen=True)
class HandlerContext:
    engine: PatternExecutionEngine
    query: str
    mode: ExecutionMode
    decision: RoutingDecision
    pattern: PatternDefinition | None
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return namespace_of(self.context)

    @property
    def captures(self) -> dict[str, str]:
        return self.decision.captures

    def limit(self, default: int = 10) -> int:
        raw = self.context.get("limit", default)
        if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 100:
            raise InvalidRequestError("context.limit must be an integer between 1 and 100")
        return raw

    def topic(self) -> str:
        explicit = self.context.get("topic")
        return explicit if isinstance(explicit, str) and explicit.strip() else self.query


Handler = Callable[[HandlerContext], Awaitable[Any]]


def namespace_of(context: Mapping[str, Any]) -> str:
    namespace = context.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not namespace.strip() or len(namespace) > 128:
        raise InvalidRequestError("context.namespace must be a non-empty string of at most 128 "
                                  "characters")
    return namespace


def _memories(records: list[Any]) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(r) for r in records]


# -- infrastructure ---------------------------------------------------------------------------


async def delegate_to_caller(ctx: HandlerContext) -> dict[str, Any]:
    """No bound handler: return the decision so the calling agent runs its own tool."""
    return {
        "action": "delegate",
        "pattern": ctx.pattern.name if ctx.pattern else None,
        "pattern_type": ctx.decision.pattern_type.value,
        "captures": ctx.captures,
        "reasoning": ctx.decision.reasoning,
        "note": "tmws does not run commands; the caller executes the matched tool",
    }


async def health_check(ctx: HandlerContext) -> dict[str, Any]:
    report = await ctx.engine.health(probe_database=ctx.mode is not ExecutionMode.FAST)
    if not report["healthy"]:
        failing = [name for name in ("engine", "database", "cache")
                   if report[name]["status"] not in ("ok", "not_probed")]
        raise HealthCheckFailed(f"unhealthy: {', '.join(failing)}", report)
    return report


class HealthCheckFailed(Exception):
    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


async def engine_statistics(ctx: HandlerContext) -> dict[str, Any]:
    return ctx.engine.get_stats()


_SUBJECTS: Final = {
    "time": ("avg_execution_time_ms",), "execution": ("avg_execution_time_ms", "total_executions"),
    "token": ("total_tokens_used", "tokens_saved"), "tokens": ("total_tokens_used", "tokens_saved"),
    "cache": ("cache_hits", "cache_hit_rate"), "hits": ("cache_hits", "cache_hit_rate"),
    "errors": ("failed_executions",), "failures": ("failed_executions",),
    "executions": ("total_executions", "successful_executions", "failed_executions"),
    "patterns": ("registry_stats",),
}


async def quick_calculation(ctx: HandlerContext) -> dict[str, Any]:
    """Figures from the engine's counters; 'connections' reads the pool, not the database."""
    stats = ctx.engine.get_stats()
    words = set(topic_words(ctx.query)) | set(ctx.captures.values())
    if words & {"connection", "connections", "pool"}:
        return {"subject": "connections", "value": ctx.engine.pool_stats()}
    for word in words:
        keys = _SUBJECTS.get(word.lower())
        if keys:
            return {"subject": word.lower(), "value": {k: stats[k] for k in keys}}
    return {"subject": "summary", "value": {k: stats[k] for k in (
        "total_executions", "success_rate", "avg_execution_time_ms", "total_tokens_used",
        "cache_hit_rate")}}


# -- memory -----------------------------------------------------------------------------------


async def recall_memory(ctx: HandlerContext) -> dict[str, Any]:
    records = await ctx.engine.memory.search(ctx.namespace, ctx.topic(), limit=ctx.limit())
    return {"memories": _memories(records), "count": len(records),
            "terms": topic_words(ctx.topic())}


async def store_memory(ctx: HandlerContext) -> dict[str, Any]:
    content = ctx.context.get("content")
    if content is None:
        content = ctx.engine.registry.text_after_trigger(ctx.pattern, ctx.query) \
            if ctx.pattern else ctx.query
    if not isinstance(content, str) or not content.strip():
        raise InvalidRequestError("nothing to store: put the text after the trigger "
                                  "(e.g. 'remember <text>') or in context.content")
    tags = ctx.context.get("tags", [])
    if isinstance(tags, str) or not isinstance(tags, list) or \
            not all(isinstance(t, str) for t in tags):
        raise InvalidRequestError("context.tags must be a list of strings")
    importance = ctx.context.get("importance", 0.5)
    if isinstance(importance, bool) or not isinstance(importance, int | float):
        raise InvalidRequestError("context.importance must be a number between 0 and 1")
    memory_type = ctx.context.get("memory_type", "general")
    if not isinstance(memory_type, str) or not memory_type:
        raise InvalidRequestError("context.memory_type must be a non-empty string")
    metadata = ctx.context.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InvalidRequestError("context.metadata must be an object")
    visibility = ctx.context.get("visibility", "private")
    if visibility not in VISIBILITIES:
        raise InvalidRequestError(f"context.visibility must be one of {', '.join(VISIBILITIES)}")
    memory_id = await ctx.engine.memory.store(
        ctx.namespace, content, memory_type=memory_type, importance=float(importance),
        tags=tags, metadata=metadata, visibility=visibility)
    return {"stored": True, "id": memory_id, "namespace": ctx.namespace,
            "visibility": visibility}


async def similar_memories(ctx: HandlerContext) -> dict[str, Any]:
    """Nearest memories by embedding (kNN); scores are cosine similarities."""
    records = await ctx.engine.memory.similar(ctx.namespace, ctx.topic(), limit=ctx.limit())
    return {"memories": _memories(records), "count": len(records),
            "embedding": ctx.engine.memory.provider.model}


async def search_by_tag(ctx: HandlerContext) -> dict[str, Any]:
    tag = ctx.context.get("tag") or ctx.captures.get("tag")
    if not isinstance(tag, str) or not tag.strip():
        raise InvalidRequestError("no tag given: use 'tagged with <tag>' or context.tag")
    records = await ctx.engine.memory.by_tag(ctx.namespace, [tag], limit=ctx.limit())
    return {"tag": tag.lower(), "memories": _memories(records), "count": len(records)}


async def filter_by_importance(ctx: HandlerContext) -> dict[str, Any]:
    threshold = ctx.context.get("min_importance", 0.7)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise InvalidRequestError("context.min_importance must be a number between 0 and 1")
    records = await ctx.engine.memory.by_importance(
        ctx.namespace, min_importance=float(threshold), limit=ctx.limit())
    return {"min_importance": threshold, "memories": _memories(records), "count": len(records)}


# -- hybrid -----------------------------------------------------------------------------------


_PAST_DAYS: Final = re.compile(r"\b(?:past|last|previous)\s+(\d{1,5})\s+days?\b", re.IGNORECASE)
_PAST_UNIT: Final = re.compile(r"\b(?:past|last|previous)\s+(day|week|month|year)\b", re.IGNORECASE)
_UNIT_DAYS: Final = {"day": 1, "week": 7, "month": 30, "year": 365}


def _window_days(ctx: HandlerContext) -> float | None:
    """The time window asked for: context.days, or 'past N days' / 'last week' in the query."""
    raw = ctx.context.get("days")
    if raw is not None:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
            raise InvalidRequestError("context.days must be a positive number")
        return float(raw)
    if match := _PAST_DAYS.search(ctx.query):
        return float(match[1])
    if match := _PAST_UNIT.search(ctx.query):
        return float(_UNIT_DAYS[match[1].lower()])
    return None


async def temporal_analysis(ctx: HandlerContext) -> dict[str, Any]:
    days = _window_days(ctx)
    records = await ctx.engine.memory.recent(ctx.namespace, limit=ctx.limit(), days=days)
    return {"memories": _memories(records), "count": len(records), "order": "newest first",
            "window_days": days}


async def aggregate_insights(ctx: HandlerContext) -> dict[str, Any]:
    return await ctx.engine.memory.aggregate(ctx.namespace, ctx.topic())


async def compare_patterns(ctx: HandlerContext) -> dict[str, Any]:
    left = ctx.context.get("left") or ctx.captures.get("left")
    right = ctx.context.get("right") or ctx.captures.get("right")
    if not (isinstance(left, str) and isinstance(right, str)):
        raise InvalidRequestError("compare needs two subjects: 'compare A with B' or "
                                  "context.left and context.right")
    limit = ctx.limit(5)
    first, second = await asyncio.gather(
        ctx.engine.memory.search(ctx.namespace, left, limit=limit),
        ctx.engine.memory.search(ctx.namespace, right, limit=limit))
    return {"left": {"subject": left, "memories": _memories(first)},
            "right": {"subject": right, "memories": _memories(second)}}


async def recall_with_decision(ctx: HandlerContext) -> dict[str, Any]:
    """Hybrid default: related memories plus the decision for the caller's tools."""
    recalled, decision = await asyncio.gather(recall_memory(ctx), delegate_to_caller(ctx))
    return {**recalled, "delegate": decision}


HANDLERS: Final[dict[str, Handler]] = {
    "delegate": delegate_to_caller,
    "health_check": health_check,
    "engine_statistics": engine_statistics,
    "quick_calculation": quick_calculation,
    "recall_memory": recall_memory,
    "store_memory": store_memory,
    "search_by_tag": search_by_tag,
    "filter_by_importance": filter_by_importance,
    "semantic_search": similar_memories,
    "analyze_codebase": recall_with_decision,
    "compare_patterns": compare_patterns,
    "aggregate_insights": aggregate_insights,
    "temporal_analysis": temporal_analysis,
    "contextual_recommendation": recall_with_decision,
    "recall_with_decision": recall_with_decision,
}
WRITE_HANDLERS: Final = frozenset({"store_memory"})
_TYPE_DEFAULTS: Final = {
    PatternType.INFRASTRUCTURE: "delegate",
    PatternType.MEMORY: "recall_memory",
    PatternType.HYBRID: "recall_with_decision",
}


def resolve_handler(pattern: PatternDefinition | None, pattern_type: PatternType,
                    bound: Mapping[str, Handler]) -> str:
    """The name of the handler that runs a pattern (or a keyword-routed type)."""
    if pattern is not None:
        if pattern.handler is not None:
            return pattern.handler
        if pattern.name in bound:
            return pattern.name
    return _TYPE_DEFAULTS[pattern_type]
