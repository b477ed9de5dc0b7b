"""Pattern handlers: the work behind each pattern, and what each one may do.

A pattern runs the handler named by its ``handler`` field, else the handler named like
the pattern, else its type's default. Tool patterns without a bound handler hand the
routing decision back to the caller: tmws never runs shell commands.

Every handler declares its :class:`Capabilities`: whether it reads memories, writes them,
reads service-wide statistics, or queries the database at all. The declaration, not the
pattern's type, decides which token scopes an execution needs, whether its cached result
depends on memory writes, and whether it may run in ``fast`` mode or behind an
``infrastructure`` pattern (neither ever touches memories). A handler reaches only what it
declared: :class:`HandlerContext` refuses the rest with :class:`HandlerCapabilityError`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec

from tmws.errors import HandlerCapabilityError, HealthCheckFailed, InvalidRequestError
from tmws.health import HealthReport
from tmws.inputs import ExecutionContext, MemoryInput, convert
from tmws.memory import topic_words
from tmws.models import ExecutionMode, PatternDefinition, PatternType, RoutingDecision

if TYPE_CHECKING:
    from tmws._statistics import ServiceStatus
    from tmws.memory import MemoryStore
    from tmws.registry import PatternRegistry

__all__ = [
    "HANDLERS",
    "BoundHandler",
    "Capabilities",
    "Handler",
    "HandlerContext",
    "HandlerServices",
    "check_pattern_handler",
    "resolve_handler",
    "subjects_in",
    "tag_in",
]


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a handler does beyond computing on the query and its context."""

    reads_memory: bool = False  # recalls memories (scope memories:read)
    writes_memory: bool = False  # stores or deletes memories (scope memories:write)
    reads_stats: bool = False  # service-wide figures, across tenants (scope metrics:read)
    # Queries PostgreSQL for anything else (a health probe); never in fast mode.
    database: bool = False

    @property
    def touches_memory(self) -> bool:
        return self.reads_memory or self.writes_memory

    @property
    def touches_database(self) -> bool:
        return self.database or self.touches_memory

    def scopes(self) -> frozenset[str]:
        """The token scopes an execution of this handler needs beyond ``execute``."""
        needed = set()
        if self.reads_memory:
            needed.add("memories:read")
        if self.writes_memory:
            needed.add("memories:write")
        if self.reads_stats:
            needed.add("metrics:read")
        return frozenset(needed)

    def describe(self) -> str:
        done = [name for name, on in (("reads memories", self.reads_memory),
                                      ("writes memories", self.writes_memory),
                                      ("reads service statistics", self.reads_stats),
                                      ("queries the database", self.database)) if on]
        return ", ".join(done) or "computes on the query alone"


PURE: Final = Capabilities()


class HandlerServices(NamedTuple):
    """The engine's parts a handler may reach, each behind the capability it needs: one
    per engine, shared by every execution. Never the engine itself."""

    memory: MemoryStore
    registry: PatternRegistry
    status: ServiceStatus


@dataclass(frozen=True)
class HandlerContext:
    """What a handler gets: the query, the routing decision, the checked context fields
    (``params``; the raw ``context`` keeps any others) and the services it declared."""

    query: str
    mode: ExecutionMode
    decision: RoutingDecision
    pattern: PatternDefinition | None
    params: ExecutionContext
    capabilities: Capabilities
    _services: HandlerServices = field(repr=False)
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.params.namespace

    @property
    def captures(self) -> dict[str, str]:
        return self.decision.captures

    def limit(self, default: int = 10) -> int:
        return self.params.limit if self.params.limit is not None else default

    def topic(self) -> str:
        explicit = self.params.topic
        return explicit if explicit is not None and explicit.strip() else self.query

    @property
    def memory(self) -> MemoryStore:
        """The memory store, for a handler that declared reading or writing memories."""
        self._require(self.capabilities.touches_memory, "memories")
        return self._services.memory

    def text_after_trigger(self) -> str:
        """The query's text after its trigger match (all of it without a trigger)."""
        if self.pattern is None:
            return self.query.strip()
        return self._services.registry.text_after_trigger(self.pattern, self.query)

    def statistics(self) -> dict[str, Any]:
        """The service's counters (``GET /api/v1/stats``), for a handler that declared
        reads_stats."""
        self._require(self.capabilities.reads_stats, "service statistics")
        return self._services.status.stats()

    def pool_statistics(self) -> dict[str, Any]:
        self._require(self.capabilities.reads_stats, "service statistics")
        return self._services.status.pool_stats()

    async def health(self) -> HealthReport:
        """The health report; the database is probed only by a handler that declared
        database access, and never in fast mode."""
        probe = self.capabilities.database and self.mode is not ExecutionMode.FAST
        return await self._services.status.health(probe_database=probe)

    def _require(self, allowed: bool, what: str) -> None:
        if not allowed:
            name = self.decision.pattern_name or self.decision.pattern_type.value
            raise HandlerCapabilityError(
                f"the handler of {name!r} used {what} without declaring it "
                f"(it declared: {self.capabilities.describe()}); bind it with the capability")


Handler = Callable[[HandlerContext], Awaitable[Any]]


class BoundHandler(NamedTuple):
    run: Handler
    capabilities: Capabilities


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
    report = await ctx.health()
    if not report.healthy:
        raise HealthCheckFailed(f"unhealthy: {', '.join(report.failing())}",
                                report.to_builtins())
    return report.to_builtins()


async def engine_statistics(ctx: HandlerContext) -> dict[str, Any]:
    return ctx.statistics()


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
    words = set(topic_words(ctx.query)) | set(ctx.captures.values())
    if words & {"connection", "connections", "pool"}:
        return {"subject": "connections", "value": ctx.pool_statistics()}
    stats = ctx.statistics()
    for word in words:
        keys = _SUBJECTS.get(word.lower())
        if keys:
            return {"subject": word.lower(), "value": {k: stats[k] for k in keys}}
    return {"subject": "summary", "value": {k: stats[k] for k in (
        "total_executions", "success_rate", "avg_execution_time_ms", "total_tokens_used",
        "cache_hit_rate")}}


# -- memory -----------------------------------------------------------------------------------


async def recall_memory(ctx: HandlerContext) -> dict[str, Any]:
    records = await ctx.memory.search(ctx.namespace, ctx.topic(), limit=ctx.limit())
    return {"memories": _memories(records), "count": len(records),
            "terms": topic_words(ctx.topic())}


async def store_memory(ctx: HandlerContext) -> dict[str, Any]:
    params = ctx.params
    content = params.content if params.content is not None else ctx.text_after_trigger()
    if not content.strip():
        raise InvalidRequestError("nothing to store: put the text after the trigger "
                                  "(e.g. 'remember <text>') or in context.content")
    given = {name: getattr(params, name) for name in
             ("memory_type", "importance", "tags", "metadata", "visibility")}
    memory = convert({"content": content, **{k: v for k, v in given.items() if v is not None}},
                     MemoryInput, "context")
    stored = await ctx.memory.store_input(ctx.namespace, memory)
    return {"stored": True, "id": stored.id, "namespace": ctx.namespace,
            "visibility": memory.visibility}


async def similar_memories(ctx: HandlerContext) -> dict[str, Any]:
    """Nearest memories by embedding (kNN); scores are cosine similarities."""
    store = ctx.memory
    records = await store.similar(ctx.namespace, ctx.topic(), limit=ctx.limit())
    return {"memories": _memories(records), "count": len(records),
            "embedding": store.provider.model}


# Arguments when the trigger's named groups give none: the query was routed by its examples
# (stage 2) or phrased so the trigger took another form ("memories tagged critical",
# "compare the old flow with the new one", "redis vs memcached").
_TAG_PHRASES: Final = (
    re.compile(r"#(?P<tag>[\w-]+)"),
    re.compile(r"\btag(?:ged)?\s+(?:with\s+|as\s+)?(?:the\s+)?(?P<tag>[\w-]+)", re.IGNORECASE),
    re.compile(r"\b(?P<tag>[\w-]+)\s+tag\b", re.IGNORECASE),
)
_NOT_A_TAG: Final = frozenset({"a", "an", "the", "with", "as", "by", "of", "for", "my", "our",
                               "this", "that", "same", "any", "each", "every", "no", "one"})
_COMPARISONS: Final = (
    re.compile(r"\bdifference\s+between\s+(?P<left>.+?)\s+and\s+(?P<right>.+)", re.IGNORECASE),
    re.compile(r"\bcompare\s+(?P<left>.+?)\s+(?:with|to|against|and|versus|vs\.?)\s+"
               r"(?P<right>.+)", re.IGNORECASE),
    re.compile(r"^(?:how\s+(?:does|do|did)\s+)?(?P<left>.+?)\s+compare[sd]?\s+"
               r"(?:to|with|against)\s+(?P<right>.+)", re.IGNORECASE),
    re.compile(r"(?P<left>[^:;?!,]+?)\s+(?:vs\.?|versus)\s+(?P<right>.+)", re.IGNORECASE),
)
_CLAUSE_END: Final = re.compile(r"[:;?!,]")


def tag_in(query: str) -> str | None:
    """The tag a query names ('tagged critical', 'tag performance', 'the security tag',
    '#deploy'), or None."""
    for phrase in _TAG_PHRASES:
        for match in phrase.finditer(query):
            tag = match["tag"]
            if tag.lower() not in _NOT_A_TAG:
                return tag
    return None


def subjects_in(query: str) -> tuple[str, str] | None:
    """The two subjects of a comparison ('compare A with B', 'difference between A and B',
    'how does A compare to B', 'A vs B'), each up to the end of its clause, or None."""
    for phrase in _COMPARISONS:
        if match := phrase.search(query):
            left = _CLAUSE_END.split(match["left"], maxsplit=1)[-1].strip()
            right = _CLAUSE_END.split(match["right"], maxsplit=1)[0].strip()
            if left and right:
                return left, right
    return None


async def search_by_tag(ctx: HandlerContext) -> dict[str, Any]:
    tag = ctx.params.tag or ctx.captures.get("tag") or tag_in(ctx.query)
    if not tag or not tag.strip():
        raise InvalidRequestError("no tag given: use 'tagged with <tag>' or context.tag")
    records = await ctx.memory.by_tag(ctx.namespace, [tag], limit=ctx.limit())
    return {"tag": tag.strip().lower(), "memories": _memories(records), "count": len(records)}


async def filter_by_importance(ctx: HandlerContext) -> dict[str, Any]:
    threshold = ctx.params.min_importance if ctx.params.min_importance is not None else 0.7
    records = await ctx.memory.by_importance(ctx.namespace, min_importance=threshold,
                                             limit=ctx.limit())
    return {"min_importance": threshold, "memories": _memories(records), "count": len(records)}


# -- hybrid -----------------------------------------------------------------------------------


_PAST_DAYS: Final = re.compile(r"\b(?:past|last|previous)\s+(\d{1,5})\s+days?\b", re.IGNORECASE)
_PAST_UNIT: Final = re.compile(r"\b(?:past|last|previous)\s+(day|week|month|year)\b", re.IGNORECASE)
_UNIT_DAYS: Final = {"day": 1, "week": 7, "month": 30, "year": 365}


def _window_days(ctx: HandlerContext) -> float | None:
    """The time window asked for: context.days, or 'past N days' / 'last week' in the query."""
    if ctx.params.days is not None:
        return ctx.params.days
    if match := _PAST_DAYS.search(ctx.query):
        return float(match[1]) or None
    if match := _PAST_UNIT.search(ctx.query):
        return float(_UNIT_DAYS[match[1].lower()])
    return None


async def temporal_analysis(ctx: HandlerContext) -> dict[str, Any]:
    days = _window_days(ctx)
    records = await ctx.memory.recent(ctx.namespace, limit=ctx.limit(), days=days)
    return {"memories": _memories(records), "count": len(records), "order": "newest first",
            "window_days": days}


async def aggregate_insights(ctx: HandlerContext) -> dict[str, Any]:
    return await ctx.memory.aggregate(ctx.namespace, ctx.topic())


async def compare_patterns(ctx: HandlerContext) -> dict[str, Any]:
    left = ctx.params.left or ctx.captures.get("left")
    right = ctx.params.right or ctx.captures.get("right")
    if not (left and right) and (parsed := subjects_in(ctx.query)):
        left, right = left or parsed[0], right or parsed[1]
    if not (left and right):
        raise InvalidRequestError("compare needs two subjects: 'compare A with B' or "
                                  "context.left and context.right")
    limit = ctx.limit(5)
    store = ctx.memory
    first, second = await asyncio.gather(
        store.search(ctx.namespace, left, limit=limit),
        store.search(ctx.namespace, right, limit=limit))
    return {"left": {"subject": left, "memories": _memories(first)},
            "right": {"subject": right, "memories": _memories(second)}}


async def recall_with_decision(ctx: HandlerContext) -> dict[str, Any]:
    """Hybrid default: related memories plus the decision for the caller's tools."""
    recalled, decision = await asyncio.gather(recall_memory(ctx), delegate_to_caller(ctx))
    return {**recalled, "delegate": decision}


_READS: Final = Capabilities(reads_memory=True)

HANDLERS: Final[dict[str, BoundHandler]] = {
    "delegate": BoundHandler(delegate_to_caller, PURE),
    # Pings the database outside fast mode; its report carries no tenant data.
    "health_check": BoundHandler(health_check, Capabilities(database=True)),
    "engine_statistics": BoundHandler(engine_statistics, Capabilities(reads_stats=True)),
    "quick_calculation": BoundHandler(quick_calculation, Capabilities(reads_stats=True)),
    "recall_memory": BoundHandler(recall_memory, _READS),
    "store_memory": BoundHandler(store_memory, Capabilities(writes_memory=True)),
    "search_by_tag": BoundHandler(search_by_tag, _READS),
    "filter_by_importance": BoundHandler(filter_by_importance, _READS),
    "semantic_search": BoundHandler(similar_memories, _READS),
    "analyze_codebase": BoundHandler(recall_with_decision, _READS),
    "compare_patterns": BoundHandler(compare_patterns, _READS),
    "aggregate_insights": BoundHandler(aggregate_insights, _READS),
    "temporal_analysis": BoundHandler(temporal_analysis, _READS),
    "contextual_recommendation": BoundHandler(recall_with_decision, _READS),
    "recall_with_decision": BoundHandler(recall_with_decision, _READS),
}
_TYPE_DEFAULTS: Final = {
    PatternType.INFRASTRUCTURE: "delegate",
    PatternType.MEMORY: "recall_memory",
    PatternType.HYBRID: "recall_with_decision",
}


def resolve_handler(pattern: PatternDefinition | None, pattern_type: PatternType,
                    bound: Mapping[str, BoundHandler]) -> str:
    """The name of the handler that runs a pattern (or a keyword-routed type)."""
    if pattern is not None:
        if pattern.handler is not None:
            return pattern.handler
        if pattern.name in bound:
            return pattern.name
    return _TYPE_DEFAULTS[pattern_type]


def check_pattern_handler(pattern: PatternDefinition, bound: Mapping[str, BoundHandler]
                          ) -> str | None:
    """Why ``pattern`` cannot run with the handlers ``bound``, or None: an unknown handler,
    or an infrastructure pattern whose handler touches memories (infrastructure patterns run
    in fast mode and must never reach tenant data)."""
    if pattern.handler is not None and pattern.handler not in bound:
        return (f"unknown handler {pattern.handler!r} (bound: {', '.join(sorted(bound))})")
    name = resolve_handler(pattern, pattern.pattern_type, bound)
    handler = bound.get(name)
    if (handler is not None and pattern.pattern_type is PatternType.INFRASTRUCTURE
            and handler.capabilities.touches_memory):
        return (f"handler {name!r} {handler.capabilities.describe()}; an infrastructure "
                "pattern never touches memories (fast mode runs it): make it a memory or "
                "hybrid pattern")
    return None

