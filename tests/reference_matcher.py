"""A plain-Python matcher with the semantics the native ``Matcher`` must have.

Patterns are tried in order of ``(-priority, registration order)``; the first whose regex
``re.search``es the query with ``re.IGNORECASE`` wins. Tests run the same cases against this
and against the Rust core.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Pattern:
    name: str
    regex: re.Pattern[str]
    priority: int
    order: int
    kind: str


class ReferenceMatcher:
    """Priority-ordered ``re.search`` over ``(name, regex, priority, kind)`` specs."""

    def __init__(self, patterns: Sequence[tuple[str, str, int, str]]) -> None:
        compiled = [
            _Pattern(name, re.compile(regex, re.IGNORECASE), priority, order, kind)
            for order, (name, regex, priority, kind) in enumerate(patterns)
        ]
        self._ranked = sorted(compiled, key=lambda p: (-p.priority, p.order))

    def all(self, query: str, kind: str | None = None) -> list[str]:
        """Names of all matching patterns, best first."""
        return [
            p.name
            for p in self._ranked
            if (kind is None or p.kind == kind) and p.regex.search(query) is not None
        ]

    def best(self, query: str, kind: str | None = None) -> str | None:
        """Name of the best matching pattern, or ``None``."""
        for p in self._ranked:
            if (kind is None or p.kind == kind) and p.regex.search(query) is not None:
                return p.name
        return None
