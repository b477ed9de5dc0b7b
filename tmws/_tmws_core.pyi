"""Native core of tmws (Rust, built with PyO3 from ``rust_core/``): matching, embedding and
lexical example scoring.

Import it through :mod:`tmws._native` only.

Trigger regexes are Python ``re`` patterns: the core parses Python's syntax (3.11 grammar)
and answers what ``re.search(regex, query, re.IGNORECASE)`` answers, but on finite automata
(regex-automata, no backtracking), in time linear in the query whatever the pattern.

Translated exactly: sets and literals with sre's IGNORECASE rules (simple lower-casing plus
its extra equivalences: dotless ``\\u0131``/``i``/``\\u0130``, long ``\\u017f``/``s``,
Kelvin ``\\u212a``/``k``, ...); ``\\w``
``\\d`` ``\\s`` from Python's own tables (ASCII under ``(?a)``); ``$`` (also before a final
``\\n``), ``\\Z``, ``\\A``, ``^``, ``(?m)``, ``\\B`` (never in an empty query); octal/NUL
escapes (``\\0``, ``\\141``, ``[\\1]``), ``[\\b]``, ``(?#...)``, inline flags
``(?aimsux)`` / ``(?imsx-imsx:...)``, ``{,n}``, lazy quantifiers, ``(?P<name>...)``. What Python
reads literally stays literal (``\\b{start}``, ``[[:upper:]]``).

Refused (``CompileFailure``, raised by :mod:`tmws._native` as ``PatternCompileError``, naming
the construct and its offset): look-around, backreferences (``\\1``, ``(?P=name)``),
conditionals, possessive quantifiers, atomic groups, ``\\N{...}``, a ``$`` followed by more
pattern where no exact equivalent exists (``(a$)b``), an automaton over 2 MiB, and everything
Python rejects (``\\p{...}``, ...).

Not yet exact: on non-ASCII queries ``\\b``/``\\B`` use regex-automata's Unicode word
definition, which differs from Python's next to combining marks and "other numbers"; a
``span``/``captures`` end may differ when a repeated subpattern can match empty.
"""

from collections.abc import Sequence
from typing import Final, Self

__version__: Final[str]

PatternSpec = tuple[str, str, int, str]
"""``(name, regex, priority, kind)``."""

Example = tuple[str, str, str]
"""``(pattern name, kind, text)``: one example utterance of a pattern."""

class CompileFailure(Exception):
    """A trigger regex (or a pattern list) was rejected: ``args == (pattern_name, reason)``.

    Raised for syntax errors, look-around, back-references, a regex over the size limit,
    and duplicate pattern names. Private to ``tmws._native``, which raises
    ``tmws.errors.PatternCompileError`` (same arguments) in its place, so the core imports
    nothing from the Python package.
    """

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

    def __new__(
        cls,
        patterns: Sequence[PatternSpec],
        *,
        cache_capacity: int = 10_000,
        warmup: Sequence[str] = (),
    ) -> Self:
        """Compile ``patterns`` (``(name, regex, priority, kind)``, in registration order).

        Raises:
            CompileFailure: a regex cannot be compiled, or two patterns share a name.
        """

    @staticmethod
    def check(name: str, regex: str) -> None:
        """Validate one regex exactly as the constructor would.

        Raises:
            CompileFailure: naming ``name`` and the reason.
        """

    def replace(self, patterns: Sequence[PatternSpec], *, warmup: Sequence[str] = ()) -> int:
        """Compile ``patterns`` and swap them in with a fresh, empty cache.

        Returns the new :attr:`version`. If compilation fails, raises
        ``CompileFailure`` and the current library stays in place untouched.
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

MemoryRowTuple = tuple[int, str, bool, float, int, str, bytes | None]
"""``(id, namespace, shared, importance, created_us, tsv, embedding)``: a memory as
:meth:`RecallIndex.apply` takes it. ``tsv`` is ``content_tsv::text`` (lexemes with a space,
the scope tags, are skipped); ``embedding`` is ``vector_send(embedding)`` or None."""


class RecallIndex:
    """The derived recall index: memory recall ranked in process (``tmws._recall_index``
    keeps it current from PostgreSQL, which stays the source of truth).

    Private memories sit in one partition per namespace, shared ones in one partition of
    their own; a search reads the namespace's partition and the shared one, so it never
    sees another namespace's private memories. Each partition holds BM25 postings and an
    HNSW graph over unit vectors (searched exactly below ``exact_below`` vectors).

    Ranking: full text over the readable memories holding all query lexemes (BM25, k1 1.2,
    b 0.75, global document frequencies), or any when none holds them all; the nearest
    ``candidates`` vectors by cosine distance, of which those farther than
    ``max_distance`` are dropped (the others keep their rank; a graph's search starts from
    its entry point and from the full-text candidates, which an entry-point descent often
    misses when they are unlike their neighbours); each memory scores
    ``sum(1 / (rrf_k + rank))`` over the two lists. Ties: importance, creation time, id,
    all descending.

    Thread-safe: searches share a read lock, :meth:`apply` and :meth:`clear` take the write
    lock; all release the GIL.
    """

    def __init__(self, dim: int, *, m: int = 16, ef_construction: int = 64,
                 ef_search: int = 100, exact_below: int = 4096) -> None:
        """An empty index of ``dim``-dimensional vectors; HNSW links per node ``m``
        (``2 * m`` on layer 0), build beam ``ef_construction``, search beam ``ef_search``.

        Raises:
            ValueError: a parameter is not positive (``exact_below`` may be 0).
        """

    def apply(self, rows: Sequence[MemoryRowTuple], deleted: Sequence[int]) -> None:
        """Upserts ``rows`` (replacing a memory of the same id), then removes ``deleted``
        ids (unknown ones are ignored). Every row is parsed before any is applied.

        Raises:
            ValueError: a row's ``tsv`` is not a tsvector's text or its embedding is not
                ``dim`` dimensions; the message names the memory id. Nothing is applied.
        """

    def clear(self) -> None:
        """Removes every memory (before a reload)."""

    def compaction_due(self) -> bool:
        """Whether removals (deletes, and updates, which replace) have left a partition
        with a quarter of its postings dead or half as many removed vectors as live ones.
        Removals never compact by themselves: see :meth:`compact`."""

    def compact(self) -> int:
        """Rebuilds the postings and graph of every partition that is due; returns how many
        were. Takes the write lock for as long as building those graphs takes (a large
        partition: as long as loading it), so searches wait: answer from elsewhere
        meanwhile."""

    def shrink(self) -> None:
        """Gives back spare capacity (after a load, whose arrays grew by doubling)."""

    def search(self, namespace: str, query_tsv: str, vector: Sequence[float] | None, *,
               candidates: int, limit: int, max_distance: float, rrf_k: float
               ) -> list[tuple[int, float]]:
        """``(memory id, fused score)``, best first, at most ``limit``, readable by
        ``namespace``. ``query_tsv`` is ``to_tsvector('english', words)::text`` (positions
        are ignored); ``vector`` is the query's embedding (normalised here; a zero vector
        means no vector ranking).

        Raises:
            ValueError: ``query_tsv`` is malformed, ``vector`` has the wrong length, or
                ``candidates`` / ``limit`` is negative.
        """

    def stats(self) -> dict[str, int]:
        """``documents``, ``partitions``, ``graphs`` (partitions searched by HNSW),
        ``vectors``, ``removed_vectors`` (tombstones awaiting a rebuild), ``terms``,
        ``dead_postings`` and ``memory_bytes`` (approximate heap use)."""

    def __contains__(self, memory_id: int) -> bool: ...

    def __len__(self) -> int:
        """Memories held."""


class ExampleIndex:
    """Lexical index of the example utterances of a pattern library.

    Scores a query against every example with TF-IDF cosine similarity and returns each
    pattern's best example; the router's second stage, for queries no trigger regex matches.

    The score is LEXICAL, not semantic: it measures shared words, word bigrams and word
    pieces ("optimize" / "optimization"), never meaning ("car" / "automobile" score 0).

    Features are those of :class:`HashEmbedder` (lowercased Unicode alphanumeric words,
    adjacent word bigrams, 3- to 5-character n-grams of ``<word>``), kept exact instead of
    hashed into buckets. Term weight ``(1 + ln tf) * idf`` with the smoothed
    ``idf = ln((1 + N) / (1 + df)) + 1`` over the ``N`` examples (scikit-learn's
    ``TfidfVectorizer(sublinear_tf=True)`` convention). Words and bigrams form one block,
    n-grams another, each L2-normalised on its own, and
    ``score = 0.5 * cos_words + 0.5 * cos_chars``, in ``(0, 1]``: ``1.0`` means the same
    features in the same proportions (e.g. the same text up to case and punctuation).
    Query features found in no example are ignored entirely (they do not lower the score);
    a query with no known features scores nothing. Scores are ``float32`` values.

    With the examples' embeddings by a real model attached (:meth:`with_vectors`), a query
    given with its own embedding scores
    ``(1 - weight) * lexical + weight * max(0, cosine)``: close in words or in meaning.

    Immutable and thread-safe; construction and :meth:`score` release the GIL. Rebuild it
    when the library changes. Lexical query cost grows with the examples that share
    features with the query, not with the size of the library; a blended query costs one
    dot product per example.
    """

    def __init__(self, examples: Sequence[Example]) -> None:
        """Index ``examples``, each a ``(pattern name, kind, text)`` tuple.

        A pattern may have any number of examples, not necessarily adjacent; patterns rank
        ties in order of their first example. Kind belongs to each example: a ``kind``
        filter considers only the examples of that kind. Examples without features (empty,
        punctuation only) are counted in ``N`` but never match.

        Raises:
            TypeError: ``examples`` is not a sequence of tuples of ``str``.
            ValueError: a tuple does not have 3 items.
        """

    def with_vectors(
        self, vectors: Sequence[Sequence[float] | None], weight: float
    ) -> ExampleIndex:
        """A copy of this index with the examples' embeddings attached.

        ``vectors[i]`` embeds example ``i`` of the constructor's list (``None``: it has no
        embedding and its semantic part is 0); all have one length and are normalised
        here. ``weight`` (0 to 1) is the share of the cosine in a blended score.

        Raises:
            ValueError: not one entry per example, lengths differ, a vector is empty or not
                finite, no vector at all, or ``weight`` outside ``[0, 1]``.
        """

    def score(
        self,
        query: str,
        top_k: int = 5,
        kind: str | None = None,
        exclude: int | None = None,
        vector: Sequence[float] | None = None,
    ) -> list[tuple[str, float, int]]:
        """The ``top_k`` best patterns for ``query``: ``(pattern name, score, example)``.

        One entry per pattern, for its best-scoring example; ``example`` is that example's
        index in the constructor's ``examples`` (the first one among equal scores). Sorted by
        score descending, then by pattern registration order; only scores above 0. With
        ``kind``, only examples of that kind count (an unknown kind gives ``[]``). With
        ``exclude``, that example is left out (its features still count in the idf): how an
        example scores against all the others, for leave-one-out calibration. With
        ``vector`` (the query's embedding by the model of :meth:`with_vectors`), the score
        is the blend; a zero vector scores lexically.

        Raises:
            ValueError: ``top_k`` is negative; ``vector`` given to an index without vectors,
                of another length than theirs, or not finite.
        """

    def classify(
        self,
        query: str,
        top_k: int = 5,
        kind: str | None = None,
        exclude: int | None = None,
    ) -> list[tuple[str, float, int, float]]:
        """The patterns sharing a feature with ``query``, most probable first:
        ``(pattern name, probability, example, cosine)``, at most ``top_k``.

        Multinomial naive Bayes over the same features and weights as :meth:`score`: a
        pattern's counts are the summed TF-IDF weights of its examples (words and bigrams
        weighted 0.7, n-grams 0.3), additive smoothing 0.03, priors by number of examples.
        Unlike the nearest-example cosine it weighs a word by how it is spread over all
        the patterns' examples, so subject words many patterns share decide little.
        Probabilities are over all patterns; ``kind`` only filters which are returned (a
        pattern's kind is that of its first example). ``example`` and ``cosine`` are the
        pattern's nearest example and its score as :meth:`score` gives them. Ties go to
        registration order. ``exclude`` leaves that example out (its counts are removed
        from its pattern; the idf stays).

        Raises:
            ValueError: ``top_k`` is negative.
        """

    @property
    def feature_count(self) -> int:
        """Distinct features (words, bigrams and n-grams) over all examples."""

    @property
    def pattern_count(self) -> int:
        """Distinct pattern names."""

    @property
    def vector_dim(self) -> int | None:
        """Length of the attached example vectors (``None`` without)."""

    @property
    def vector_weight(self) -> float | None:
        """Share of the cosine in a blended score (``None`` without vectors)."""

    def stats(self) -> dict[str, int]:
        """Sizes: ``patterns``, ``examples``, ``kinds``, ``word_features`` (words and
        bigrams), ``char_features`` (n-grams), ``postings`` (non-zero weights of all example
        vectors) and ``empty_examples`` (examples without features)."""

    def __len__(self) -> int:
        """Number of examples."""

def normalize_query(query: str) -> str:
    """``query`` lower-cased (Unicode), whitespace runs collapsed to one space, ends trimmed.

    Queries that differ only in case or spacing share result-cache entries.
    """

def stemmed_words(text: str) -> list[str]:
    """The words of ``text`` (maximal runs of Unicode alphanumeric characters), lowercased,
    each of at least 4 characters reduced to its English stem (Snowball Porter 2):
    ``stemmed_words("Configured memories")`` is ``["configur", "memori"]``."""

def cache_key(parts: Sequence[str | bytes]) -> str:
    """A 128-bit key of ``parts`` (XXH3-128 over length-prefixed parts), as 32 hex digits.

    Identical on every machine and version, so instances sharing one Redis agree on keys;
    ``["ab", "c"]`` and ``["a", "bc"]`` never collide by concatenation.
    """

def json_too_deep(data: bytes, limit: int) -> int | None:
    """The byte offset of the first ``[`` or ``{`` (outside strings) that opens nesting level
    ``limit + 1``, or ``None`` if ``data`` never nests deeper than ``limit``.

    One linear pass that decodes nothing: run it before a recursive JSON decoder, which would
    otherwise fail near 1,000 levels with an error that says nothing about the input.
    """
