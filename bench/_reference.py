"""Corpus loading and the two engines the Rust matcher is compared with.

The corpora (``shared/bench/corpus_N*.json``) hold ``patterns`` in registration order,
``queries`` and ``expected`` (index of the correct pattern, or -1/None for no match).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import hyperscan

SIZES = (15, 100, 1000)


def corpus_dir() -> Path:
    """``$BENCH_CORPUS_DIR`` or the ``shared/bench`` folder beside the repository."""
    env = os.environ.get("BENCH_CORPUS_DIR")
    candidate = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "bench"
    if not candidate.is_dir():
        raise FileNotFoundError(f"benchmark corpora not found in {candidate}; set BENCH_CORPUS_DIR")
    return candidate


@dataclass(frozen=True)
class Corpus:
    n: int
    regexes: list[str]
    priorities: list[int]
    queries: list[str]
    expected: list[str | None]

    @property
    def specs(self) -> list[tuple[str, str, int, str]]:
        pairs = zip(self.regexes, self.priorities, strict=True)
        return [(f"p{i}", r, p, "trigger") for i, (r, p) in enumerate(pairs)]

    def split(self) -> dict[str, list[str]]:
        """Queries that match some pattern and queries that match none."""
        return {
            "match": [q for q, e in zip(self.queries, self.expected, strict=True) if e is not None],
            "nomatch": [q for q, e in zip(self.queries, self.expected, strict=True) if e is None],
        }


def load(n: int) -> Corpus:
    data = json.loads((corpus_dir() / f"corpus_N{n}.json").read_text())
    expected = [None if e is None or e < 0 else f"p{e}" for e in data["expected"]]
    return Corpus(
        n=n,
        regexes=[p["regex"] for p in data["patterns"]],
        priorities=[p["priority"] for p in data["patterns"]],
        queries=data["queries"],
        expected=expected,
    )


class ReLoop:
    """The Python baseline: ``re.search`` over the patterns in priority order."""

    def __init__(self, corpus: Corpus) -> None:
        order = sorted(range(corpus.n), key=lambda i: (-corpus.priorities[i], i))
        self._ranked = [
            (f"p{i}", re.compile(corpus.regexes[i], re.IGNORECASE).search) for i in order
        ]

    def best(self, query: str) -> str | None:
        for name, search in self._ranked:
            if search(query):
                return name
        return None


class Hyperscan:
    """hyperscan block mode, CASELESS | SINGLEMATCH | UTF8; best by priority among matches."""

    def __init__(self, corpus: Corpus) -> None:
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        flags = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8
        self._db.compile(
            expressions=[r.encode() for r in corpus.regexes],
            ids=list(range(corpus.n)),
            flags=[flags] * corpus.n,
        )
        self._scratch = hyperscan.Scratch(self._db)
        # Lower key = better: (-priority, registration order).
        self._key = [(-p, i) for i, p in enumerate(corpus.priorities)]

    def best(self, query: str) -> str | None:
        found: list[int] = []

        def on_match(pid: int, start: int, end: int, flags: int, ctx: object) -> None:
            found.append(pid)

        self._db.scan(query.encode(), match_event_handler=on_match, scratch=self._scratch)
        if not found:
            return None
        return f"p{min(found, key=self._key.__getitem__)}"
