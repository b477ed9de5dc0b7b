"""The router: which pattern (or at least which path) a query takes, and why.

A trigger match decides outright. Without one, a keyword vote picks the pattern type;
with no keyword either, the router gives up and reports the nearest patterns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from tmws.models import ExecutionMode, PatternDefinition, PatternType, RoutingDecision
from tmws.registry import PatternRegistry

__all__ = ["HybridRouter", "nearest_patterns"]

_WORD: Final = re.compile(r"[^\W_]+")

_KEYWORDS: Final[dict[PatternType, frozenset[str]]] = {
    PatternType.INFRASTRUCTURE: frozenset(
        "run execute call tool tools function install setup configure init health status check "
        "verify test ping calculate compute count deploy restart connection service uptime "
        "stats statistics metrics".split()
    ),
    PatternType.MEMORY: frozenset(
        "remember recall memory memories store save record retrieve fetch history tagged tag "
        "important critical note notes remembered".split()
    ),
    PatternType.HYBRID: frozenset(
        "analyze analyse investigate examine compare similar related summarize summarise "
        "aggregate combine recent latest past historical recommend suggest advise review "
        "trend trends".split()
    ),
}

_ALL_TYPES: Final = list(PatternType)
# A keyword vote is weaker evidence than a trigger: cap its confidence.
_KEYWORD_CONFIDENCE_CAP: Final = 0.6
_TRIGGER_CONFIDENCE: Final = 0.95


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def nearest_patterns(query: str, patterns: list[PatternDefinition], limit: int = 3
                     ) -> list[tuple[str, float]]:
    """Patterns whose name and example queries share the most words with the query."""
    query_words = _words(query)
    if not query_words:
        return []
    scored: list[tuple[str, float]] = []
    for pattern in patterns:
        best = 0.0
        texts = [pattern.name.replace("_", " "), *pattern.example_queries]
        for text in texts:
            words = _words(text)
            if words:
                best = max(best, len(query_words & words) / len(query_words | words))
        if best > 0:
            scored.append((pattern.name, round(best, 3)))
    scored.sort(key=lambda item: -item[1])
    return scored[:limit]


class HybridRouter:
    """Routes queries over a registry; keeps counters of how it decided."""

    def __init__(self, registry: PatternRegistry, *,
                 database_available: Callable[[], bool] = lambda: True) -> None:
        self.registry = registry
        self._database_available = database_available
        self._decisions = {"trigger": 0, "keywords": 0, "none": 0}
        self._by_type: dict[str, int] = {t.value: 0 for t in PatternType}

    async def route(self, query: str, mode: ExecutionMode | str = ExecutionMode.BALANCED,
                    context: Mapping[str, Any] | None = None) -> RoutingDecision:
        return self.route_sync(query, ExecutionMode(mode), context)

    def route_sync(self, query: str, mode: ExecutionMode,
                   context: Mapping[str, Any] | None = None) -> RoutingDecision:
        return self.explain(query, mode, self.match(query, mode))

    def match(self, query: str, mode: ExecutionMode) -> PatternDefinition | None:
        """The trigger winner among the patterns this mode allows (Rust, cached): cheap
        enough to run before the result cache is consulted."""
        return self.registry.best_match(query, self._type_filter(mode))

    def explain(self, query: str, mode: ExecutionMode,
                pattern: PatternDefinition | None) -> RoutingDecision:
        """The full decision, given what :meth:`match` returned for the same query."""
        only = self._type_filter(mode)
        if pattern is not None:
            decision = self._trigger_decision(query, pattern, only)
        else:
            # Keywords are weak evidence: never send a guess to a database that is down.
            database_down = only is None and not self._database_available()
            allowed = [only] if only is not None else (
                [PatternType.INFRASTRUCTURE] if database_down else _ALL_TYPES)
            decision = self._keyword_decision(query, allowed, mode)
        self._decisions[decision.decided_by] += 1
        if decision.decided_by != "none":
            self._by_type[decision.pattern_type] += 1
        return decision

    @staticmethod
    def _type_filter(mode: ExecutionMode) -> PatternType | None:
        return PatternType.INFRASTRUCTURE if mode is ExecutionMode.FAST else None

    def _trigger_decision(self, query: str, pattern: PatternDefinition,
                          only: PatternType | None) -> RoutingDecision:
        others = [p.name for p in self.registry.all_matches(query, only) if p.name != pattern.name]
        reasoning = (f"trigger of pattern {pattern.name!r} ({pattern.pattern_type.value}, "
                     f"priority {pattern.priority}) matched")
        if others:
            reasoning += f"; it outranks {len(others)} other matching pattern(s)"
        return RoutingDecision(
            pattern_type=pattern.pattern_type,
            confidence=_TRIGGER_CONFIDENCE,
            reasoning=reasoning,
            estimated_cost=pattern.cost_tokens,
            alternative_routes=others,
            pattern_name=pattern.name,
            decided_by="trigger",
            trigger_pattern=pattern.trigger_pattern,
            captures=self.registry.captures(pattern, query),
        )

    def _keyword_decision(self, query: str, allowed: list[PatternType],
                          mode: ExecutionMode) -> RoutingDecision:
        words = _words(query)
        votes = {t: len(words & _KEYWORDS[t]) for t in allowed}
        total = sum(votes.values())
        ranked = sorted(votes.items(), key=lambda item: -item[1])
        candidates = self.registry.patterns(
            PatternType.INFRASTRUCTURE if mode is ExecutionMode.FAST else None)
        nearest = nearest_patterns(query, candidates)
        near_names = [name for name, _ in nearest]
        restriction = "" if len(allowed) == len(PatternType) else (
            " (only infrastructure patterns are allowed: "
            + ("fast mode)" if mode is ExecutionMode.FAST else "the database is unavailable)"))
        if total and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
            chosen, count = ranked[0]
            hits = sorted(words & _KEYWORDS[chosen])
            costs = [p.cost_tokens for p in self.registry.patterns(chosen)]
            return RoutingDecision(
                pattern_type=chosen,
                confidence=round(_KEYWORD_CONFIDENCE_CAP * count / total, 3),
                reasoning=(f"no trigger matched{restriction}; keywords {', '.join(hits)} "
                           f"point to the {chosen.value} path"),
                estimated_cost=min(costs) if costs else 0,
                alternative_routes=near_names,
                pattern_name=None,
                decided_by="keywords",
            )
        why = "no keyword points to a path" if not total else "keywords are split between paths"
        return RoutingDecision(
            pattern_type=allowed[0] if len(allowed) == 1 else PatternType.HYBRID,
            confidence=0.0,
            reasoning=f"no trigger matched{restriction} and {why}",
            estimated_cost=0,
            alternative_routes=near_names,
            pattern_name=None,
            decided_by="none",
        )

    def get_stats(self) -> dict[str, Any]:
        return {"decisions": dict(self._decisions), "routes_by_type": dict(self._by_type)}
