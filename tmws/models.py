"""The value types of the pattern service: patterns, modes, routing decisions, results."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import msgspec

from tmws.errors import ErrorCode, PatternConfigError
from tmws.inputs import contains_nul

__all__ = [
    "ExampleMatch",
    "ExecutionMode",
    "ExecutionResult",
    "PatternDefinition",
    "PatternLimits",
    "PatternType",
    "RoutingDecision",
]


class PatternType(enum.StrEnum):
    """Which path executes a pattern."""

    INFRASTRUCTURE = "infrastructure"  # fast tool path, never touches the database
    MEMORY = "memory"  # retrieval from or writes to PostgreSQL
    HYBRID = "hybrid"  # handler and memory retrieval in parallel


class ExecutionMode(enum.StrEnum):
    """How much work the engine may do for a query."""

    FAST = "fast"  # infrastructure patterns only; never touches the database
    BALANCED = "balanced"  # the best match of any type
    COMPREHENSIVE = "comprehensive"  # the matched handler and memory retrieval in parallel


_PATTERN_FIELDS = frozenset(
    {"name", "pattern_type", "trigger_pattern", "cost_tokens", "priority", "cache_ttl",
     "handler", "metadata", "examples", "negative_examples", "min_score"}
)


class PatternDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """One trigger pattern and how to execute it."""

    name: str
    pattern_type: PatternType
    trigger_pattern: str
    cost_tokens: int = 0
    priority: int = 0
    cache_ttl: int | None = None  # None: the pattern type's ttl; 0: never cached
    handler: str | None = None  # None: the handler named like the pattern, else the type default
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    # Utterances the example router (stage 2) compares queries with, beside
    # metadata.example_queries; and this pattern's own score threshold there.
    examples: list[str] = msgspec.field(default_factory=list)
    min_score: float | None = None
    # Queries that look like this pattern's but are not for it: nearer to one of them than
    # to any example, a query never goes to this pattern by its examples.
    negative_examples: list[str] = msgspec.field(default_factory=list)

    @property
    def cacheable(self) -> bool:
        return self.cache_ttl != 0

    @property
    def example_queries(self) -> list[str]:
        examples = self.metadata.get("example_queries", [])
        return [e for e in examples if isinstance(e, str)]

    @property
    def routing_examples(self) -> list[str]:
        """Every example utterance, documented ones first, without duplicates."""
        seen: dict[str, None] = {}
        for text in (*self.example_queries, *self.examples):
            if text.strip():
                seen.setdefault(text.strip(), None)
        return list(seen)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, source: str | None = None
    ) -> PatternDefinition:
        """Build a pattern from a mapping as written in the pattern YAML file.

        Raises PatternConfigError naming the source, the pattern and the problem.
        """
        if not isinstance(config, Mapping):
            raise PatternConfigError(
                f"a pattern must be a mapping, got {type(config).__name__}", source=source
            )
        name = config.get("name")
        label = name if isinstance(name, str) else None
        unknown = sorted(set(config) - _PATTERN_FIELDS)
        if unknown:
            raise PatternConfigError(
                f"unknown field(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(_PATTERN_FIELDS))}",
                source=source,
                pattern=label,
            )
        for required in ("name", "pattern_type", "trigger_pattern"):
            if config.get(required) in (None, ""):
                raise PatternConfigError(
                    f"missing required field {required!r}", source=source, pattern=label
                )
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise PatternConfigError(
                "name must be letters, digits, '_' or '-'", source=source, pattern=str(name)
            )
        try:
            pattern = msgspec.convert(dict(config), cls, strict=False)
        except msgspec.ValidationError as exc:
            raise PatternConfigError(_explain(exc), source=source, pattern=label) from None
        if pattern.cost_tokens < 0:
            raise PatternConfigError("cost_tokens must be 0 or more", source=source, pattern=label)
        if pattern.cache_ttl is not None and pattern.cache_ttl < 0:
            raise PatternConfigError("cache_ttl must be 0 or more", source=source, pattern=label)
        if pattern.min_score is not None and not 0.0 < pattern.min_score <= 1.0:
            raise PatternConfigError("min_score must be in (0, 1]", source=source, pattern=label)
        return pattern

    def to_config(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data


class PatternLimits(msgspec.Struct, frozen=True):
    """What a pattern may declare (``TMWS_PATTERN_MAX_CACHE_TTL``,
    ``TMWS_PATTERN_MAX_COST_TOKENS``): a TTL Redis cannot store, or a cost that swamps the
    token counters, is refused wherever the pattern comes from."""

    max_cache_ttl: int = 7 * 86400
    max_cost_tokens: int = 1_000_000

    def check(self, pattern: PatternDefinition, *, source: str | None = None) -> None:
        """PatternConfigError naming the pattern, the field and the limit."""
        if pattern.cache_ttl is not None and pattern.cache_ttl > self.max_cache_ttl:
            raise PatternConfigError(
                f"cache_ttl {pattern.cache_ttl} exceeds {self.max_cache_ttl} seconds "
                "(TMWS_PATTERN_MAX_CACHE_TTL)", source=source, pattern=pattern.name)
        if pattern.cost_tokens > self.max_cost_tokens:
            raise PatternConfigError(
                f"cost_tokens {pattern.cost_tokens} exceeds {self.max_cost_tokens} "
                "(TMWS_PATTERN_MAX_COST_TOKENS)", source=source, pattern=pattern.name)
        if contains_nul(msgspec.to_builtins(pattern)):  # the shared set is stored as jsonb
            raise PatternConfigError(
                "contains a NUL character (\\u0000), which PostgreSQL cannot store",
                source=source, pattern=pattern.name)


def _explain(exc: msgspec.ValidationError) -> str:
    message = str(exc)
    if "PatternType" in message or "pattern_type" in message:
        allowed = ", ".join(t.value for t in PatternType)
        return f"{message} (pattern_type must be one of: {allowed})"
    return message


class ExampleMatch(msgspec.Struct):
    """A pattern's nearest example utterance to a query, and how close it is (0..1)."""

    pattern: str
    score: float
    example: str


class RoutingDecision(msgspec.Struct, kw_only=True):
    """Where a query goes, and why.

    ``decided_by`` names the stage that decided: ``trigger`` (a trigger regex matched),
    ``examples`` (no trigger; the nearest example utterances cleared the threshold and the
    margin), ``keywords`` (neither; a keyword vote picked the type, and that type's most
    probable pattern runs) or ``none`` (the router abstained). Every decision but ``none``
    names a pattern.
    """

    pattern_type: PatternType
    confidence: float
    reasoning: str
    estimated_cost: int
    alternative_routes: list[str] = msgspec.field(default_factory=list)
    pattern_name: str | None = None
    decided_by: str = "trigger"  # trigger | examples | keywords | none
    trigger_pattern: str | None = None
    captures: dict[str, str] = msgspec.field(default_factory=dict)
    # Stage 2's evidence: best candidates first, with scores; empty when a trigger decided.
    nearest_examples: list[ExampleMatch] = msgspec.field(default_factory=list)
    runner_up: str | None = None
    margin: float | None = None  # best score minus the runner-up's (stage 2)
    threshold: float | None = None  # the score the best candidate had to reach
    abstained: bool = False
    # How stage 2 scored: "lexical", or "lexical+PROVIDER:MODEL" when blended with a real
    # embedding model's cosine. None when a trigger decided.
    scorer: str | None = None


class ExecutionResult(msgspec.Struct, kw_only=True):
    """The outcome of ``engine.execute``."""

    pattern_name: str | None
    success: bool
    result: Any = None
    execution_time_ms: float = 0.0
    tokens_used: int = 0
    cache_hit: bool = False
    error: str | None = None
    # Stable reason for a failure (tmws.errors.ErrorCode lists them, with their HTTP status).
    error_code: ErrorCode | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
