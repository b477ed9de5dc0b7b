"""Runs the vendored peer regex suites (``tests/data/regex_peers``) through tmws and ``re``.

Every pattern that Python compiles is searched both ways, with ``re.IGNORECASE`` as the
service uses it and, wrapped in ``(?-i:...)``, case-sensitively. Each pair is classified:
agree, disagree, or refused (tmws refused the pattern; the reason is kept).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tmws._native import Matcher, PatternCompileError

__all__ = ["CASES", "Outcome", "load_cases", "run_peer_suite", "tmws_search"]

CASES = Path(__file__).parent / "data" / "regex_peers" / "cases.json"


@dataclass
class Outcome:
    agree: int = 0
    disagree: list[tuple[str, str, str, bool, bool]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    python_rejects: int = 0


def load_cases() -> list[dict[str, str]]:
    cases: list[dict[str, str]] = json.loads(CASES.read_text())
    return cases


def _python(pattern: str) -> re.Pattern[str] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return re.compile(pattern, re.IGNORECASE)
        except (re.error, OverflowError, RecursionError):
            return None


def tmws_search(pattern: str, texts: list[str]) -> list[bool] | str:
    """Whether tmws finds ``pattern`` in each text, or the reason it refuses the pattern."""
    try:
        matcher = Matcher([("p", pattern, 0, "k")], cache_capacity=0)
    except PatternCompileError as exc:
        return str(exc)
    return [matcher.best(text) is not None for text in texts]


def run_peer_suite() -> Outcome:
    by_pattern: dict[str, list[str]] = {}
    for case in load_cases():
        by_pattern.setdefault(case["pattern"], []).append(case["text"])
    out = Outcome()
    for pattern, texts in by_pattern.items():
        variants = [pattern]
        if _python(f"(?-i:{pattern})") is not None:
            variants.append(f"(?-i:{pattern})")
        for variant in variants:
            compiled = _python(variant)
            if compiled is None:
                out.python_rejects += 1
                continue
            got = tmws_search(variant, texts)
            if isinstance(got, str):
                out.refused[variant] = got
                continue
            for text, ours in zip(texts, got, strict=True):
                theirs = compiled.search(text) is not None
                if ours == theirs:
                    out.agree += 1
                else:
                    out.disagree.append((variant, text, "ignorecase", ours, theirs))
    return out


if __name__ == "__main__":
    result = run_peer_suite()
    print(f"agree={result.agree} disagree={len(result.disagree)} "
          f"refused_patterns={len(result.refused)} python_rejects={result.python_rejects}")
    for variant, text, _, ours, theirs in result.disagree:
        print(f"DISAGREE {variant!r} on {text!r}: tmws={ours} re={theirs}")
    for variant, reason in result.refused.items():
        print(f"REFUSED {variant!r}: {reason}")
