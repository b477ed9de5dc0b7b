"""Native matching core of tmws (Rust, built with PyO3 from ``rust_core/``).

Import it through :mod:`tmws._native` only.

Regexes run on Rust's ``regex`` engines (finite automata, no backtracking): matching takes
time linear in the query whatever the pattern, so a pattern author cannot cause catastrophic
backtracking. Look-around and back-references, which would need backtracking, are rejected.
Matching is case-insensitive with Unicode simple case folding, like Python's
``re.IGNORECASE`` on ``str``. One known difference from Python ``re``: ``$`` matches only at
the very end of the query (Python also matches before a final ``\\n``).
"""

from collections.abc import Sequence
from typing import Final

from tmws.errors import PatternError

__version__: Final[str]

PatternSpec = tuple[str, str, int, str]
"""``(name, regex, priority, kind)``."""

class PatternCompileError(PatternError):
    """A trigger regex (or a pattern list) was rejected.

    Raised for syntax errors, look-around, back-references, a regex over the size limit,
    and duplicate pattern names. The message names the pattern and the reason.
    """

    pattern_name: str
    """Name of the offending pattern (``"<pattern set>"`` if only the whole set failed)."""
    reason: str
    """One-line cause."""

    def __init__(self, pattern_name: str, reason: str) -> None: ...

class Matcher:
    """All trigger regexes of a pattern library, compiled together.

    The best pattern for a query is the one with the highest priority whose regex is found
    anywhere in the query (case-insensitive); equal priorities go to the pattern registered
    first. This equals a Python loop over the patterns sorted by ``(-priority, order)`` that
    returns the first one for which ``re.search(regex, query, re.IGNORECASE)`` succeeds.

    Thread-safe and lock-free for readers: every method except the constructor may be called
    from many threads; searches and builds release the GIL. ``replace`` swaps the compiled
    library atomically: callers see the old or the new one, never a mix.

    Results are cached per ``(query, kind)`` in a bounded LRU (``cache_capacity`` entries;
    0 disables it). Each compiled library has its own cache, so answers from before a
    ``replace`` are never returned after it.

    Compilation warms the matcher on ``warmup`` queries (plus a few built-in ones) in the
    building thread, so early queries do not pay for building the engines' lazy state.
    """

    def __init__(
        self,
        patterns: Sequence[PatternSpec],
        *,
        cache_capacity: int = 10_000,
        warmup: Sequence[str] = (),
    ) -> None:
        """Compile ``patterns`` (``(name, regex, priority, kind)``, in registration order).

        Raises:
            PatternCompileError: a regex cannot be compiled, or two patterns share a name.
        """

    @staticmethod
    def check(name: str, regex: str) -> None:
        """Validate one regex exactly as the constructor would.

        Raises:
            PatternCompileError: naming ``name`` and the reason.
        """

    def replace(self, patterns: Sequence[PatternSpec], *, warmup: Sequence[str] = ()) -> int:
        """Compile ``patterns`` and swap them in with a fresh, empty cache.

        Returns the new :attr:`version`. If compilation fails, raises
        :class:`PatternCompileError` and the current library stays in place untouched.
        """

    def best(self, query: str, kind: str | None = None) -> str | None:
        """Name of the best matching pattern, or ``None``.

        With ``kind``, only patterns of that kind are considered (an unknown kind matches
        nothing).
        """

    def all(self, query: str, kind: str | None = None) -> list[str]:
        """Names of every matching pattern, best first (same order as :meth:`best`)."""

    def captures(self, name: str, query: str) -> dict[str, str] | None:
        """Named groups of pattern ``name`` on its first match in ``query``.

        Returns ``None`` if the pattern does not match; groups that did not take part in the
        match are omitted.

        Raises:
            KeyError: no pattern is called ``name``.
        """

    def span(self, name: str, query: str) -> tuple[int, int] | None:
        """Start and end of pattern ``name``'s first match in ``query``, in characters.

        ``query[start:end]`` is the matched text; ``None`` if the pattern does not match.

        Raises:
            KeyError: no pattern is called ``name``.
        """

    def names(self) -> list[str]:
        """Pattern names in registration order."""

    @property
    def version(self) -> int:
        """1 after construction, incremented by every successful :meth:`replace`."""

    def cache_stats(self) -> dict[str, int]:
        """Counters of the current library's cache.

        Keys: ``hits``, ``misses``, ``size`` (entries), ``capacity``, ``evictions`` (entries
        dropped because the cache was full). A fresh library (after :meth:`replace`) starts
        from zero. With the cache disabled every lookup counts as a miss.
        """

    def clear_cache(self) -> None:
        """Drop every cached result (counters are kept)."""

    def _engine_info(self) -> dict[str, bool | int]:
        """Diagnostics for benchmarks: prefilter use and patterns searched without one."""

    def __len__(self) -> int:
        """Number of patterns."""
