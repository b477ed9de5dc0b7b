"""The router: which pattern a query takes, or that none does, and why.

Stage 1: a trigger match decides (Rust, deterministic, cached); a query that fires no
trigger as written is tried again with its misspelled domain terms corrected. On a cache
miss, a trigger of a pattern with enough examples yields to an abstention when the
lexicon's off-topic examples are clearly more probable than the pattern's own (a regular
expression cannot tell "save me a seat" from "save this decision"). Stage 2, only
without a trigger: the query, normalised by the lexicon (:mod:`tmws.lexicon`: typos one edit
from a domain term corrected, stems, synonyms), is compared with every pattern's example
utterances in the Rust example index, which ranks the patterns that share a feature with
it by their naive Bayes probability and names each one's nearest example. Then, in order:

1. **Off-topic:** the query abstains if an off-topic example (the lexicon's) is at least as
   probable as every pattern, or if most of its content words are unknown to the library
   and no pattern is a clear fit.
2. **Examples:** the most probable pattern wins when its probability reaches the threshold
   (``TMWS_ROUTER_MIN_SCORE`` or the pattern's ``min_score``) and leads the runner-up by
   ``TMWS_ROUTER_MIN_MARGIN``. A pattern whose negative example is more probable than it
   is out of the running.
3. **Keywords:** a keyword vote that names one pattern type picks that type's most
   probable pattern, if it reaches half the threshold.
4. Otherwise the router abstains and reports the nearest candidates with their scores.

A decision therefore ends in a pattern to run or an abstention, never in a type alone.

With a real embedding model configured and ``TMWS_ROUTER_SEMANTIC_WEIGHT`` above 0
(:mod:`tmws._example_vectors`), stage 2 scores the blend of the examples' lexical cosine
and the embedding cosine instead; recalibrate the thresholds for it (``--suggest``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from tmws.models import (
    ExampleMatch,
    ExecutionMode,
    PatternDefinition,
    PatternType,
    RoutingDecision,
)
from tmws.registry import PatternRegistry, StageTwo

if TYPE_CHECKING:
    from tmws._example_vectors import ExampleVectors

__all__ = ["HybridRouter"]

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
# A keyword vote is weaker evidence than a trigger or an example: cap its confidence.
_KEYWORD_CONFIDENCE_CAP: Final = 0.6
# A keyword vote picks its type's nearest pattern only if that one scores at least this
# share of the threshold: keywords narrow the choice, the examples still make it.
_KEYWORD_FLOOR: Final = 0.5
# Off-topic by vocabulary: a query most of whose content words no example or lexicon entry
# knows abstains, unless its best pattern is at least this probable or it has this many
# known content words ("check redis health for the zorblax cluster" says what it wants).
_UNKNOWN_SHARE: Final = 0.5
_CLEAR_FIT: Final = 0.9
_KNOWN_WORDS: Final = 2
# A trigger yields to the off-topic examples (HybridRouter._off_topic_trigger) if they
# hold the majority and are this many times as probable as its pattern's, whose examples
# number at least this.
_OFF_TOPIC_MAJORITY: Final = 0.5
_OFF_TOPIC_RATIO: Final = 3.0
_REVIEW_MIN_EXAMPLES: Final = 10
_EXAMPLE_CONFIDENCE_CAP: Final = 0.9
_TRIGGER_CONFIDENCE: Final = 0.95
_CANDIDATES: Final = 5  # stage-2 candidates reported (and compared) per query
# Stage-2 decisions kept per pattern-set version: a repeated query (every cache hit routed
# by its examples) skips the scoring and the reasoning text.
_DECISION_MEMO_SIZE: Final = 4096


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class HybridRouter:
    """Routes queries over a registry; keeps counters of how it decided."""

    def __init__(self, registry: PatternRegistry, *,
                 database_available: Callable[[], bool] = lambda: True,
                 min_score: float = 0.2, min_margin: float = 0.0,
                 vectors: ExampleVectors | None = None) -> None:
        self.registry = registry
        self.vectors = vectors
        self._database_available = database_available
        self.min_score = min_score
        self.min_margin = min_margin
        self._decisions = {"trigger": 0, "examples": 0, "keywords": 0, "none": 0}
        self._by_type: dict[str, int] = {t.value: 0 for t in PatternType}
        self._memo: dict[tuple[str, ExecutionMode, bool], RoutingDecision] = {}
        self._memo_basis: tuple[object, float, float] | None = None

    async def route(self, query: str, mode: ExecutionMode | str | None = None,
                    context: Mapping[str, Any] | None = None, *,
                    execution_mode: ExecutionMode | str | None = None,
                    _context: Mapping[str, Any] | None = None) -> RoutingDecision:
        """Where ``query`` goes in ``mode`` (default balanced), and why; nothing runs.

        ``execution_mode`` and ``_context`` are the original service's names of ``mode``
        and ``context`` (``route(query, execution_mode=ExecutionMode.BALANCED)``).
        """
        chosen = _mode(mode, execution_mode)
        pattern = self.match(query, chosen)
        vector = await self.query_vector(query) if pattern is None else None
        return self.explain(query, chosen, pattern, query_vector=vector)

    def route_sync(self, query: str, mode: ExecutionMode | str | None = None,
                   context: Mapping[str, Any] | None = None, *,
                   execution_mode: ExecutionMode | str | None = None) -> RoutingDecision:
        """:meth:`route` without the embedding model: stage 2 scores lexically."""
        chosen = _mode(mode, execution_mode)
        return self.explain(query, chosen, self.match(query, chosen))

    async def query_vector(self, query: str) -> list[float] | None:
        """The query's embedding for stage 2, or None (no model, or none in time)."""
        return None if self.vectors is None else await self.vectors.embed_query(query)

    async def embed_queries(self, queries: Sequence[str]
                            ) -> dict[str, list[float] | None] | None:
        """Vectors of many queries for calibration (None without a model)."""
        return None if self.vectors is None else await self.vectors.embed_queries(queries)

    async def settled(self) -> bool:
        """Waits until the examples of the current pattern set are embedded (no-op without
        a model); False when the model is configured but could not embed them."""
        return True if self.vectors is None else await self.vectors.settled()

    def match(self, query: str, mode: ExecutionMode) -> PatternDefinition | None:
        """The trigger winner among the patterns this mode allows (Rust, cached): cheap
        enough to run before the result cache is consulted."""
        return self.registry.best_match(query, self._type_filter(mode))

    def explain(self, query: str, mode: ExecutionMode, pattern: PatternDefinition | None, *,
                min_score: float | None = None, min_margin: float | None = None,
                thresholds: Mapping[str, float] | None = None,
                record: bool = True, leave_out: bool = False,
                query_vector: Sequence[float] | None = None) -> RoutingDecision:
        """The full decision, given what :meth:`match` returned for the same query and,
        with an embedding model, the query's vector (:meth:`query_vector`).

        For calibration: ``min_score``/``min_margin`` override the router's thresholds,
        ``thresholds`` the named patterns' own ``min_score``,
        ``leave_out`` scores a query that is an example against the other examples only,
        and ``record=False`` leaves the decision counters alone.
        """
        only = self._type_filter(mode)
        repaired = None
        if pattern is None:
            # A misspelled trigger word ("recnet changes") still fires its trigger.
            repaired = self.registry.repaired(query, leave_out=leave_out)
            pattern = self.registry.best_match(repaired, only) if repaired != query else None
        if pattern is not None and len(pattern.routing_examples) < _REVIEW_MIN_EXAMPLES:
            decision = self._trigger_decision(query, pattern, only, repaired)
        else:
            # Guesses are weaker than triggers: never send one to a database that is down.
            database_down = (pattern is None and only is None
                             and not self._database_available())
            if pattern is not None or not self.registry.vectors_attached:
                query_vector = None
            memo_key = None
            if (query_vector is None and min_score is None and min_margin is None
                    and thresholds is None and not leave_out):
                memo_key = (query, mode, database_down)
                kept = self._memoised(memo_key)
                if kept is not None:
                    decision = msgspec.structs.replace(kept)  # the caller may mark its own
                    if record:
                        self._count(decision)
                    return decision
            allowed = [only] if only is not None else (
                [PatternType.INFRASTRUCTURE] if database_down else _ALL_TYPES)
            stage_two = self.registry.stage_two(
                query, allowed[0] if len(allowed) == 1 else None, _CANDIDATES,
                leave_out=leave_out, vector=query_vector)
            score = self.min_score if min_score is None else min_score
            margin = self.min_margin if min_margin is None else min_margin
            if pattern is not None:
                decision = (self._off_topic_trigger(pattern, stage_two, allowed, score)
                            or self._trigger_decision(query, pattern, only, repaired))
            else:
                decision = (self._off_topic_decision(stage_two, allowed, mode, score)
                            or self._example_decision(stage_two.candidates, allowed, mode,
                                                      score, margin, thresholds or {})
                            or self._keyword_decision(query, allowed, mode,
                                                      stage_two.candidates, score, leave_out,
                                                      query_vector))
                decision.scorer = self._scorer(query_vector)
            if memo_key is not None:
                if len(self._memo) >= _DECISION_MEMO_SIZE:
                    del self._memo[next(iter(self._memo))]  # the oldest
                self._memo[memo_key] = msgspec.structs.replace(decision)
        if record:
            self._count(decision)
        return decision

    def _memoised(self, key: tuple[str, ExecutionMode, bool]) -> RoutingDecision | None:
        """A kept stage-2 decision, valid while the pattern set (and its example index,
        vectors included) and the thresholds are the ones it was made under."""
        basis = (self.registry.routing_basis, self.min_score, self.min_margin)
        kept = self._memo_basis
        if kept is None or kept[0] is not basis[0] or kept[1:] != basis[1:]:
            self._memo.clear()
            self._memo_basis = basis
            return None
        return self._memo.get(key)

    def _count(self, decision: RoutingDecision) -> None:
        self._decisions[decision.decided_by] += 1
        if decision.decided_by != "none":
            self._by_type[decision.pattern_type] += 1

    def _scorer(self, query_vector: Sequence[float] | None) -> str:
        if query_vector is not None and self.vectors is not None:
            return f"lexical+{self.vectors.model}"
        return "lexical"

    @staticmethod
    def _type_filter(mode: ExecutionMode) -> PatternType | None:
        return PatternType.INFRASTRUCTURE if mode is ExecutionMode.FAST else None

    def _trigger_decision(self, query: str, pattern: PatternDefinition,
                          only: PatternType | None, repaired: str | None = None
                          ) -> RoutingDecision:
        """``repaired``: the query with its typos corrected, when only that fired it."""
        text = repaired if repaired is not None else query
        others = [p.name for p in self.registry.all_matches(text, only) if p.name != pattern.name]
        reasoning = (f"trigger of pattern {pattern.name!r} ({pattern.pattern_type.value}, "
                     f"priority {pattern.priority}) matched")
        if repaired is not None:
            reasoning += f" the query with its typos corrected ({repaired!r})"
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
            captures=self.registry.captures(pattern, text),
            runner_up=others[0] if others else None,
        )

    def _off_topic_trigger(self, pattern: PatternDefinition, stage_two: StageTwo,
                           allowed: list[PatternType], min_score: float
                           ) -> RoutingDecision | None:
        """An abstention when a trigger fired on an everyday request ("save me a seat at
        the concert", "install the new dishwasher"): the off-topic examples hold the
        majority of the probability and ``_OFF_TOPIC_RATIO`` times the pattern's own.
        A trigger is a regular expression, blind to what its words are about; only a
        pattern with enough examples to speak for it is checked (on a cache miss; a hit
        was computed under the same decision)."""
        candidates, off = stage_two.candidates, stage_two.off_topic
        if off is None or off.score < _OFF_TOPIC_MAJORITY:
            return None
        own = next((c.score for c in candidates if c.pattern == pattern.name),
                   candidates[-1].score if len(candidates) == _CANDIDATES else 0.0)
        if off.score <= _OFF_TOPIC_RATIO * own:
            return None
        return self._abstention(
            candidates, allowed, min_score,
            f"trigger of pattern {pattern.name!r} matched, but the query reads as "
            f"off-topic: the off-topic example {off.example!r} scores {off.score:.2f}, the "
            f"pattern's own examples {own:.2f}: no pattern serves it")

    def _example_decision(self, candidates: list[ExampleMatch], allowed: list[PatternType],
                          mode: ExecutionMode, min_score: float, min_margin: float,
                          thresholds: Mapping[str, float]) -> RoutingDecision | None:
        """Stage 2: the best candidate, if it clears its threshold and leads by the margin."""
        if not candidates:
            return None
        best = candidates[0]
        pattern = self.registry.get(best.pattern)
        if pattern is None:
            return None
        threshold = thresholds.get(pattern.name, pattern.min_score)
        if threshold is None:
            threshold = min_score
        runner_up = candidates[1] if len(candidates) > 1 else None
        margin = round(best.score - (runner_up.score if runner_up else 0.0), 4)
        if best.score < threshold or margin < min_margin:
            return None
        lead = (f"; it leads {runner_up.pattern!r} ({runner_up.score:.2f}) by {margin:.2f}"
                if runner_up else "")
        return RoutingDecision(
            pattern_type=pattern.pattern_type,
            confidence=round(min(best.score, _EXAMPLE_CONFIDENCE_CAP), 3),
            reasoning=(f"no trigger matched{_restriction(allowed, mode)}; the query is closest "
                       f"to example {best.example!r} of pattern {pattern.name!r} "
                       f"(score {best.score:.2f} >= threshold {threshold:.2f}){lead}"),
            estimated_cost=pattern.cost_tokens,
            alternative_routes=[c.pattern for c in candidates[1:]],
            pattern_name=pattern.name,
            decided_by="examples",
            nearest_examples=candidates,
            runner_up=runner_up.pattern if runner_up else None,
            margin=margin,
            threshold=threshold,
        )

    def _off_topic_decision(self, stage_two: StageTwo, allowed: list[PatternType],
                            mode: ExecutionMode, min_score: float) -> RoutingDecision | None:
        """An abstention when the query is at least as close to an off-topic example as to
        any pattern's, or when most of what it is about is unknown to the library, at most
        one of its words is known and no pattern is a clear fit."""
        off_topic, candidates = stage_two.off_topic, stage_two.candidates
        best = candidates[0].score if candidates else 0.0
        restriction = _restriction(allowed, mode)
        if off_topic is not None and off_topic.score >= best:
            return self._abstention(
                candidates, allowed, min_score,
                f"no trigger matched{restriction}; the query is closest to the off-topic "
                f"example {off_topic.example!r} (score {off_topic.score:.2f}): no pattern "
                "serves it")
        unknown = stage_two.unknown_share
        if (unknown is not None and unknown >= _UNKNOWN_SHARE and best < _CLEAR_FIT
                and stage_two.known_words < _KNOWN_WORDS):
            return self._abstention(
                candidates, allowed, min_score,
                f"no trigger matched{restriction}; {unknown:.0%} of the words it is about "
                "are unknown to the pattern library and no pattern fits clearly (best score "
                f"{best:.2f} < {_CLEAR_FIT}): it looks off-topic")
        return None

    def _keyword_decision(self, query: str, allowed: list[PatternType], mode: ExecutionMode,
                          candidates: list[ExampleMatch], min_score: float, leave_out: bool,
                          query_vector: Sequence[float] | None) -> RoutingDecision:
        """Neither stage was sure: keywords that point to one pattern type decide for that
        type's best candidate, if it scores at least half the threshold; else abstain."""
        words = _words(query)
        votes = {t: len(words & _KEYWORDS[t]) for t in allowed}
        total = sum(votes.values())
        ranked = sorted(votes.items(), key=lambda item: -item[1])
        restriction = _restriction(allowed, mode)
        if candidates:
            best = candidates[0]
            unsure = (f"; the nearest example ({best.pattern!r}, score {best.score:.2f}) is "
                      "not close or clear enough")
        else:
            unsure = "; no example shares a word with it"
        if not total or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
            why = ("no keyword points to a path" if not total
                   else "keywords are split between paths")
            return self._abstention(candidates, allowed, min_score,
                                    f"no trigger matched{restriction}{unsure}, and {why}: "
                                    "no pattern fits")
        chosen, count = ranked[0]
        hits = ", ".join(sorted(words & _KEYWORDS[chosen]))
        of_type = [c for c in candidates if self._type_of(c.pattern) is chosen]
        if not of_type and len(allowed) > 1:
            of_type = self.registry.stage_two(query, chosen, 1, leave_out=leave_out,
                                              vector=query_vector).candidates
        floor = min_score * _KEYWORD_FLOOR
        if not of_type or of_type[0].score < floor:
            return self._abstention(
                candidates, allowed, min_score,
                f"no trigger matched{restriction}{unsure}; keywords {hits} point to the "
                f"{chosen.value} path, but none of its patterns has an example close enough "
                f"(score >= {floor:.2f}): no pattern fits")
        pick = of_type[0]
        pattern = self.registry.get(pick.pattern)
        assert pattern is not None
        others = [c for c in candidates if c.pattern != pick.pattern]
        return RoutingDecision(
            pattern_type=chosen,
            confidence=round(min(_KEYWORD_CONFIDENCE_CAP * count / total, pick.score), 3),
            reasoning=(f"no trigger matched{restriction}{unsure}; keywords {hits} point to the "
                       f"{chosen.value} path, where pattern {pick.pattern!r} is nearest "
                       f"(example {pick.example!r}, score {pick.score:.2f})"),
            estimated_cost=pattern.cost_tokens,
            alternative_routes=[c.pattern for c in others],
            pattern_name=pick.pattern,
            decided_by="keywords",
            nearest_examples=candidates,
            runner_up=others[0].pattern if others else None,
            margin=round(pick.score - others[0].score, 4) if others else None,
            threshold=min_score,
        )

    def _abstention(self, candidates: list[ExampleMatch], allowed: list[PatternType],
                    min_score: float, reasoning: str) -> RoutingDecision:
        return RoutingDecision(
            pattern_type=allowed[0] if len(allowed) == 1 else PatternType.HYBRID,
            confidence=0.0,
            reasoning=reasoning,
            estimated_cost=0,
            alternative_routes=[c.pattern for c in candidates],
            pattern_name=None,
            decided_by="none",
            abstained=True,
            nearest_examples=candidates,
            runner_up=candidates[1].pattern if len(candidates) > 1 else None,
            margin=(round(candidates[0].score - candidates[1].score, 4)
                    if len(candidates) > 1 else None),
            threshold=min_score)

    def _type_of(self, name: str) -> PatternType | None:
        pattern = self.registry.get(name)
        return None if pattern is None else pattern.pattern_type

    def get_stats(self) -> dict[str, Any]:
        """Decisions per stage and routes per type since start (``total_routes`` and
        ``route_distribution`` in percent, as the original service reported them); the
        embedding model's state."""
        total = sum(self._by_type.values())
        return {"decisions": dict(self._decisions), "routes_by_type": dict(self._by_type),
                "total_routes": total,
                "route_distribution": {kind: 100.0 * count / total if total else 0.0
                                       for kind, count in self._by_type.items()},
                "embeddings": None if self.vectors is None else self.vectors.stats()}


def _mode(mode: ExecutionMode | str | None, execution_mode: ExecutionMode | str | None
          ) -> ExecutionMode:
    """The mode given under either name (ValueError naming the choices for another)."""
    if mode is not None and execution_mode is not None and (
            _parse_mode(mode) is not _parse_mode(execution_mode)):
        raise TypeError(f"mode={mode!r} and execution_mode={execution_mode!r} disagree; "
                        "give one of them")
    given = execution_mode if execution_mode is not None else mode
    return ExecutionMode.BALANCED if given is None else _parse_mode(given)


def _parse_mode(mode: ExecutionMode | str) -> ExecutionMode:
    try:
        return ExecutionMode(mode)
    except ValueError:
        allowed = ", ".join(m.value for m in ExecutionMode)
        raise ValueError(f"unknown execution mode {mode!r}; use one of: {allowed}") from None


def _restriction(allowed: list[PatternType], mode: ExecutionMode) -> str:
    if len(allowed) == len(PatternType):
        return ""
    return (" (only infrastructure patterns are allowed: "
            + ("fast mode)" if mode is ExecutionMode.FAST else "the database is unavailable)"))
