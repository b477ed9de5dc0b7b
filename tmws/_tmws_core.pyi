"""Native core of tmws (Rust, built with PyO3 from ``rust_core/``): matching and embedding.

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

class HashEmbedder:
    """Built-in text embedder: feature hashing into an L2-normalised ``float32`` vector.

    Fast, offline and deterministic, but it measures LEXICAL similarity (shared words and
    word pieces), not semantic similarity: "optimize" is close to "optimization", while
    "car" and "automobile" score near zero. Use a learned model for meaning.

    Features: lowercased words (runs of Unicode alphanumeric characters; weight 1.0),
    adjacent word bigrams (0.5) and the 3- to 5-character n-grams of each ``<word>``
    (together weighing as much as the word, whatever its length), merged with a sublinear
    term frequency and hashed (FNV-1a 64 + ``fmix64``, sign bit plus bucket) into ``dim``
    buckets. The exact algorithm is documented in ``rust_core/src/embed.rs``.

    The same text always gives a bit-identical vector, on every platform. Any change to
    the output requires a new :attr:`algorithm` name, so store it next to the embeddings
    and re-embed rows written by another algorithm or dimension.

    A text without features (empty, whitespace or punctuation only) gives the all-zero
    vector, which has no direction: store NULL for it rather than comparing it.

    Thread-safe; every ``embed*`` method releases the GIL.
    """

    def __init__(self, dim: int = 384) -> None:
        """An embedder producing vectors of ``dim`` floats.

        Raises:
            ValueError: ``dim`` is not between 8 and 16000 (pgvector's ``vector`` limit).
        """

    @property
    def dim(self) -> int:
        """Number of components of every embedding."""

    @property
    def algorithm(self) -> str:
        """Name of the algorithm (``"hash-v1"``), to store alongside the embeddings."""

    def embed(self, text: str) -> list[float]:
        """Embedding of ``text``: ``dim`` floats of unit L2 norm, or all zeros."""

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        """Embeddings of ``texts``, one list per text, equal to :meth:`embed` on each.

        Raises:
            TypeError: ``texts`` is a single ``str`` or holds a non-``str`` item.
        """

    def embed_batch_bytes(self, texts: Sequence[str]) -> bytes:
        """Embeddings of ``texts`` as row-major little-endian ``float32`` bytes.

        ``len(texts) * dim * 4`` bytes, for zero-copy use:
        ``numpy.frombuffer(data, "<f4").reshape(len(texts), dim)``. Values are identical to
        :meth:`embed_batch`.
        """

def normalize_query(query: str) -> str:
    """``query`` lower-cased (Unicode), whitespace runs collapsed to one space, ends trimmed.

    Queries that differ only in case or spacing share result-cache entries.
    """

def cache_key(parts: Sequence[str | bytes]) -> str:
    """A 128-bit key of ``parts`` (XXH3-128 over length-prefixed parts), as 32 hex digits.

    Identical on every machine and version, so instances sharing one Redis agree on keys;
    ``["ab", "c"]`` and ``["a", "bc"]`` never collide by concatenation.
    """
