"""Routing calibration: how well a pattern library routes a labelled set of queries.

A labelled file has one ``EXPECTED<TAB>QUERY`` per line, ``EXPECTED`` being a pattern name
or ``NONE`` (the router must abstain); blank lines and ``#`` comments are skipped. Routing
only — nothing is executed, so no database is needed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Container, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, NamedTuple

import msgspec

from tmws.errors import InvalidRequestError
from tmws.models import ExecutionMode, PatternDefinition
from tmws.router import HybridRouter

__all__ = [
    "NONE",
    "Evaluation",
    "Labelled",
    "Misroute",
    "PatternScore",
    "Suggestion",
    "evaluate",
    "examples_tsv",
    "format_report",
    "labelled",
    "read_labelled",
    "suggest_thresholds",
]

NONE: Final = "NONE"  # the label of a query no pattern should take
_SCORE_GRID: Final = [round(0.05 + 0.025 * i, 3) for i in range(37)]  # 0.05 .. 0.95
_MARGIN_GRID: Final = [0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2]


class Labelled(NamedTuple):
    expected: str  # a pattern name, or NONE
    query: str
    line: int = 0


class PatternScore(msgspec.Struct):
    pattern: str
    precision: float | None  # None: never predicted
    recall: float | None  # None: never expected
    expected: int
    predicted: int
    correct: int


class Misroute(msgspec.Struct):
    line: int
    query: str
    expected: str
    predicted: str
    decided_by: str
    score: float | None  # the best stage-2 score, when stage 2 ran


class Evaluation(msgspec.Struct):
    total: int
    correct: int
    accuracy: float
    min_score: float
    min_margin: float
    mode: str
    abstained: int
    abstention_precision: float | None  # of the abstentions, the share labelled NONE
    abstention_recall: float | None  # of the NONE labels, the share abstained on
    decided_by: dict[str, int]
    per_pattern: list[PatternScore]
    confusion: dict[str, dict[str, int]]  # expected -> predicted -> count
    misroutes: list[Misroute]
    scorer: str = "lexical"  # how stage 2 scored (RoutingDecision.scorer)


class Suggestion(msgspec.Struct):
    min_score: float
    min_margin: float
    accuracy: float
    # The best-accuracy plateau the suggestion sits in the middle of.
    min_score_range: tuple[float, float]
    # Patterns whose own min_score raises the accuracy further (with the global pair).
    per_pattern: dict[str, float] = msgspec.field(default_factory=dict)
    accuracy_global: float | None = None  # before the per-pattern thresholds


def read_labelled(path: str | Path, known: Iterable[str]) -> list[Labelled]:
    """Parse a labelled file; errors name the file, the line and the problem."""
    names = set(known)
    items: list[Labelled] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequestError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        expected, tab, query = raw.partition("\t")
        expected, query = expected.strip(), query.strip()
        if not tab or not query:
            raise InvalidRequestError(f"{path}:{number}: expected 'PATTERN<TAB>QUERY'")
        items.append(labelled(expected, query, number, names, where=f"{path}:{number}: "))
    if not items:
        raise InvalidRequestError(f"{path}: no labelled queries")
    return items


def labelled(expected: str, query: str, line: int, names: Container[str], *,
             where: str = "") -> Labelled:
    """One labelled query, its label checked against the registered ``names``; the error
    starts with ``where`` (the file and line, or the field)."""
    if expected != NONE and expected not in names:
        raise InvalidRequestError(
            f"{where}unknown pattern {expected!r} (use a registered name or {NONE})")
    return Labelled(expected, query, line)


def examples_tsv(patterns: Sequence[PatternDefinition], off_topic: Sequence[str] = ()) -> str:
    """A labelled file of every pattern's example utterances and the library's off-topic
    examples (labelled NONE)."""
    lines = [f"{p.name}\t{q}" for p in patterns for q in p.routing_examples]
    lines += [f"{NONE}\t{q}" for q in off_topic]
    return "\n".join(lines) + "\n"


QueryVectors = Mapping[str, Sequence[float] | None]


def evaluate(router: HybridRouter, labelled: Sequence[Labelled], *,
             mode: ExecutionMode = ExecutionMode.BALANCED, min_score: float | None = None,
             min_margin: float | None = None, leave_out: bool = False,
             vectors: QueryVectors | None = None,
             thresholds: Mapping[str, float] | None = None) -> Evaluation:
    """Route every query (nothing runs) and compare with its label.

    ``leave_out=True``: a query that is itself one of the library's examples is scored
    against the other examples only, so an example file measures how well each example is
    covered by the rest rather than finding itself (stage 1 is unaffected).
    ``vectors``: the queries' embeddings (``await router.embed_queries(...)``), when the
    router has an embedding model; without them stage 2 scores lexically.
    ``thresholds``: per-pattern ``min_score`` to try instead of the patterns' own.
    """
    score = router.min_score if min_score is None else min_score
    margin = router.min_margin if min_margin is None else min_margin
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    stages: Counter[str] = Counter()
    misroutes: list[Misroute] = []
    scorers: Counter[str] = Counter()
    for item in labelled:
        decision = router.explain(item.query, mode, router.match(item.query, mode),
                                  min_score=score, min_margin=margin,
                                  thresholds=thresholds, record=False,
                                  leave_out=leave_out,
                                  query_vector=vectors.get(item.query) if vectors else None)
        stages[decision.decided_by] += 1
        if decision.scorer is not None:
            scorers[decision.scorer] += 1
        predicted = decision.pattern_name or NONE  # a decision names a pattern or abstains
        confusion[item.expected][predicted] += 1
        if predicted != item.expected:
            best = decision.nearest_examples[0].score if decision.nearest_examples else None
            misroutes.append(Misroute(item.line, item.query, item.expected, predicted,
                                      decision.decided_by, best))
    total = len(labelled)
    correct = total - len(misroutes)
    expected_counts = Counter(item.expected for item in labelled)
    predicted_counts: Counter[str] = Counter()
    for row in confusion.values():
        predicted_counts.update(row)
    names = sorted((set(expected_counts) | set(predicted_counts)) - {NONE})
    per_pattern = [PatternScore(
        name,
        _ratio(confusion[name][name], predicted_counts[name]),
        _ratio(confusion[name][name], expected_counts[name]),
        expected_counts[name], predicted_counts[name], confusion[name][name],
    ) for name in names]
    return Evaluation(
        total=total, correct=correct, accuracy=round(correct / total, 4) if total else 0.0,
        min_score=score, min_margin=margin, mode=mode.value,
        abstained=predicted_counts[NONE],
        abstention_precision=_ratio(confusion[NONE][NONE], predicted_counts[NONE]),
        abstention_recall=_ratio(confusion[NONE][NONE], expected_counts[NONE]),
        decided_by=dict(stages), per_pattern=per_pattern,
        confusion={k: dict(v) for k, v in sorted(confusion.items())}, misroutes=misroutes,
        scorer=" and ".join(sorted(scorers)) or "lexical")


def suggest_thresholds(router: HybridRouter, labelled: Sequence[Labelled], *,
                       mode: ExecutionMode = ExecutionMode.BALANCED,
                       vectors: QueryVectors | None = None) -> Suggestion:
    """The (min_score, min_margin) that maximise accuracy on ``labelled``, then the
    per-pattern ``min_score`` that raise it further; each example scored leave-one-out
    (else every example would find itself and any threshold fit).

    Among equally accurate settings it takes the margin with the widest plateau of scores
    and the middle of that plateau, which is the least fragile choice. A pattern gets its
    own threshold only if that makes at least one more query right; patterns are fitted
    one at a time, in order, each keeping the ones fitted before it.
    """
    results: dict[float, list[tuple[float, float]]] = {}  # margin -> [(score, accuracy)]
    for margin in _MARGIN_GRID:
        results[margin] = [(score, evaluate(router, labelled, mode=mode, min_score=score,
                                            min_margin=margin, leave_out=True,
                                            vectors=vectors).accuracy)
                           for score in _SCORE_GRID]
    best = max(acc for rows in results.values() for _, acc in rows)
    choice: tuple[int, float, tuple[float, float, float]] | None = None
    for margin, rows in results.items():
        plateau = _widest_plateau(rows, best)
        if plateau is not None and (choice is None or plateau[0] > choice[0]):
            choice = (plateau[0], margin, plateau[1:])
    assert choice is not None
    _, min_margin, (middle, low, high) = choice
    own: dict[str, float] = {}
    accuracy = best
    names = sorted({item.expected for item in labelled} - {NONE}
                   | {p.name for p in router.registry.patterns()})
    for name in names:
        rows = [(score, evaluate(router, labelled, mode=mode, min_score=middle,
                                 min_margin=min_margin, leave_out=True, vectors=vectors,
                                 thresholds={**own, name: score}).accuracy)
                for score in _SCORE_GRID]
        top = max(acc for _, acc in rows)
        plateau = _widest_plateau(rows, top)
        if top > accuracy and plateau is not None:
            own[name] = plateau[1]
            accuracy = top
    return Suggestion(min_score=middle, min_margin=min_margin, accuracy=accuracy,
                      min_score_range=(low, high), per_pattern=own, accuracy_global=best)


def _widest_plateau(rows: Sequence[tuple[float, float]], level: float
                    ) -> tuple[int, float, float, float] | None:
    """(width, middle, low, high) of the widest run of scores whose accuracy is ``level``."""
    widest: tuple[int, float, float, float] | None = None
    run: list[float] = []
    for score, accuracy in [*rows, (2.0, -1.0)]:  # the sentinel closes the last run
        if accuracy == level:
            run.append(score)
            continue
        if run and (widest is None or len(run) > widest[0]):
            widest = (len(run), run[len(run) // 2], run[0], run[-1])
        run = []
    return widest


def format_report(evaluation: Evaluation, suggestion: Suggestion | None = None) -> str:
    """The evaluation as the text ``tmws patterns eval`` prints."""
    e = evaluation
    out = [f"accuracy: {e.accuracy:.1%} ({e.correct}/{e.total}) — mode {e.mode}, "
           f"min_score {e.min_score}, min_margin {e.min_margin}, stage 2 {e.scorer}",
           "decided by: " + ", ".join(f"{k} {v}" for k, v in sorted(e.decided_by.items())),
           f"abstentions: {e.abstained} — precision {_pct(e.abstention_precision)}, "
           f"recall {_pct(e.abstention_recall)}", "",
           f"{'pattern':32} {'precision':>9} {'recall':>7} {'expected':>8} {'predicted':>9}"]
    for p in e.per_pattern:
        out.append(f"{p.pattern:32} {_pct(p.precision):>9} {_pct(p.recall):>7} "
                   f"{p.expected:>8} {p.predicted:>9}")
    out += ["", "confusion (expected -> predicted: count), errors only:"]
    errors = [(exp, pred, n) for exp, row in e.confusion.items() for pred, n in row.items()
              if pred != exp]
    out += [f"  {exp} -> {pred}: {n}" for exp, pred, n in sorted(errors)] or ["  (none)"]
    if e.misroutes:
        out += ["", "misrouted:"]
        out += [f"  line {m.line}: {m.query!r} expected {m.expected}, got {m.predicted} "
                f"({m.decided_by}" + (f", best score {m.score:.2f})" if m.score is not None
                                      else ")") for m in e.misroutes]
    if suggestion is not None:
        low, high = suggestion.min_score_range
        overall = (suggestion.accuracy_global if suggestion.accuracy_global is not None
                   else suggestion.accuracy)
        out += ["", f"suggested: TMWS_ROUTER_MIN_SCORE={suggestion.min_score} "
                f"TMWS_ROUTER_MIN_MARGIN={suggestion.min_margin} -> leave-one-out accuracy "
                f"{overall:.1%} (same accuracy for min_score {low}..{high})"]
        if suggestion.per_pattern:
            out += [f"and per pattern (min_score in the pattern file) -> "
                    f"{suggestion.accuracy:.1%}:"]
            out += [f"  {name}: min_score: {score}"
                    for name, score in sorted(suggestion.per_pattern.items())]
    return "\n".join(out)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
