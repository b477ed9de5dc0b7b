"""The pattern registry: the live pattern set and its compiled Rust matcher.

Every change builds a complete new set first (:meth:`PatternRegistry.prepare`: limits
checked, every trigger compiled, the example index built) and only then swaps it in
(:meth:`PatternRegistry.install`), so a failed registration leaves the registry exactly as
it was. Preparing touches no state, so it may run in a thread.

The registry is one process's view. Changes every instance must see go through the
engine (``engine.register_pattern`` and friends, :mod:`tmws._pattern_sync`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import msgspec

from tmws._native import ExampleIndex, Matcher, cache_key
from tmws.errors import PatternConfigError
from tmws.lexicon import RoutingLexicon, TypoCorrector
from tmws.models import ExampleMatch, PatternDefinition, PatternLimits, PatternType

__all__ = ["OFF_TOPIC", "PatternRegistry", "PreparedSet", "StageTwo", "fingerprint_of"]

# Index names of what is not a pattern: pattern names are letters, digits, "_" and "-".
OFF_TOPIC = "!off-topic"  # the lexicon's off-topic examples
_OFF_TOPIC_KIND = "none"
_NEGATIVE = "!not:"  # + a pattern's name: its negative examples


def fingerprint_of(patterns: Iterable[PatternDefinition]) -> str:
    """The content hash of a pattern set, in order: equal on every instance for equal sets,
    so instances running the same set share cached results."""
    return cache_key([msgspec.msgpack.encode(p) for p in patterns])


class PreparedSet(NamedTuple):
    """A complete pattern set, checked and compiled, ready to :meth:`install`."""

    patterns: dict[str, PatternDefinition]
    matcher: Matcher
    examples: ExampleIndex
    texts: list[str]
    positions: dict[str, int]
    fingerprint: str
    digests: dict[str, str]  # per pattern: the content hash of its definition
    # Normalised word -> examples (of patterns) containing it; the lexicon's words count 1.
    vocabulary: dict[str, int]
    corrector: TypoCorrector  # query words one edit from a known word


class StageTwo(NamedTuple):
    """A query's stage-2 scores: the patterns by their nearest example, best first (a
    pattern whose negative example is nearer than its examples left out), and the nearest
    off-topic example (None if none shares anything with the query)."""

    candidates: list[ExampleMatch]
    off_topic: ExampleMatch | None
    # Of the query's content words (tmws.lexicon), the share no pattern example and no
    # lexicon entry knows (None when it has none), and how many are known.
    unknown_share: float | None = None
    known_words: int = 0


class PatternRegistry:
    """Patterns in registration order, matched by the Rust core."""

    def __init__(self, patterns: Iterable[PatternDefinition] = (), *,
                 match_cache_size: int = 10_000, limits: PatternLimits | None = None,
                 lexicon: RoutingLexicon | None = None) -> None:
        self.limits = limits or PatternLimits()
        self.lexicon = lexicon if lexicon is not None else RoutingLexicon.shipped()
        self._patterns: dict[str, PatternDefinition] = {}
        self.fingerprint = cache_key([])
        self._digests: dict[str, str] = {}
        self._listeners: list[Callable[[], None]] = []
        self._matcher = Matcher([], cache_capacity=match_cache_size)
        self._examples: tuple[ExampleIndex, list[str]] = (ExampleIndex([]), [])
        self._example_positions: dict[str, int] = {}
        self._vocabulary: dict[str, int] = {}
        self._corrector = TypoCorrector({})
        self._indexed: tuple[ExampleIndex, frozenset[str]] | None = None
        self._last_corrections: tuple[tuple[str, bool, TypoCorrector], dict[str, str]] | None = None
        self._match_cache_size = match_cache_size
        self._version = 0
        # The shared version this set is (tmws._pattern_sync), None for a local change.
        self.shared_version: int | None = None
        self.register_batch(list(patterns))

    # -- changes ---------------------------------------------------------------------------

    def register(self, pattern: PatternDefinition, *, replace: bool = False) -> None:
        """Add one pattern (or replace one of the same name with ``replace=True``)."""
        self.register_batch([pattern], replace=replace)

    def register_batch(self, patterns: Iterable[PatternDefinition], *,
                       replace: bool = False) -> None:
        """Add several patterns at once: all are registered or none is."""
        staged = dict(self._patterns)
        batch_names: set[str] = set()
        for pattern in patterns:
            if pattern.name in batch_names or (pattern.name in staged and not replace):
                raise PatternConfigError("a pattern with this name is already registered",
                                         pattern=pattern.name)
            batch_names.add(pattern.name)
            staged[pattern.name] = pattern
        self._swap(staged)

    def unregister(self, name: str) -> PatternDefinition:
        """Remove a pattern; KeyError if it is not registered."""
        if name not in self._patterns:
            raise KeyError(name)
        staged = dict(self._patterns)
        removed = staged.pop(name)
        self._swap(staged)
        return removed

    def replace_all(self, patterns: Iterable[PatternDefinition]) -> None:
        """Swap in a whole new pattern set (a reload)."""
        self.install(self.prepare(patterns))

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Called after every successful change of the pattern set."""
        self._listeners.append(listener)

    def _swap(self, staged: dict[str, PatternDefinition]) -> None:
        self.install(self.prepare(staged.values()))

    def prepare(self, patterns: Iterable[PatternDefinition]) -> PreparedSet:
        """Check and compile a whole set without touching the registry (thread-safe):
        PatternConfigError or PatternCompileError naming the pattern if any is unusable."""
        staged: dict[str, PatternDefinition] = {}
        for pattern in patterns:
            if pattern.name in staged:
                raise PatternConfigError("duplicate pattern name", pattern=pattern.name)
            self.limits.check(pattern)
            staged[pattern.name] = pattern
        specs = [(p.name, p.trigger_pattern, p.priority, p.pattern_type.value)
                 for p in staged.values()]
        warmup = [q for p in staged.values() for q in p.example_queries]
        # Stage 2's index is built once per pattern-set version, never per request.
        examples = [(p.name, p.pattern_type.value, text)
                    for p in staged.values() for text in p.routing_examples]
        examples += [(_NEGATIVE + p.name, p.pattern_type.value, text)
                     for p in staged.values() for text in p.negative_examples]
        examples += [(OFF_TOPIC, _OFF_TOPIC_KIND, text) for text in self.lexicon.off_topic]
        normalized = {text: self.lexicon.normalize(text) for _, _, text in examples}
        vocabulary = dict.fromkeys(self.lexicon.vocabulary, 1)
        terms = dict.fromkeys(self.lexicon.terms, 1)
        seen: Counter[str] = Counter()  # how many texts use each word
        for text in self.lexicon.off_topic:
            seen.update(set(TypoCorrector.words_of(text)))
        for p in staged.values():
            for text in p.routing_examples:
                for word in set(normalized[text].split()):
                    vocabulary[word] = vocabulary.get(word, 0) + 1
                for word in set(TypoCorrector.words_of(text)):
                    seen[word] += 1
                    if word in terms:
                        terms[word] += 1
        try:
            # Content, not a version counter, so instances with equal sets share L2.
            fingerprint = fingerprint_of(staged.values())
            digests = {name: cache_key([msgspec.msgpack.encode(p)])
                       for name, p in staged.items()}
            index = ExampleIndex([(name, kind, normalized[text]) for name, kind, text in examples])
            matcher = Matcher(specs, cache_capacity=self._match_cache_size, warmup=warmup)
        except OverflowError as exc:  # an integer (priority, metadata) beyond 64 bits
            raise PatternConfigError(f"a number is out of range: {exc}") from None
        positions: dict[str, int] = {}
        for position, (_, _, text) in enumerate(examples):
            positions.setdefault(text, position)
        return PreparedSet(staged, matcher, index, [text for _, _, text in examples],
                           positions, fingerprint, digests, vocabulary,
                           TypoCorrector(terms, seen, self.lexicon.spellings))

    def install(self, prepared: PreparedSet, *, shared_version: int | None = None) -> None:
        """Swap a prepared set in (one reference at a time, each atomic under the GIL) and
        tell the listeners. ``shared_version``: the group's version this set is; without
        it (a change made here only) the registry keeps the one it had, and runs ahead of
        the group until the group's next version replaces the whole set."""
        self._matcher = prepared.matcher
        self._patterns = prepared.patterns
        self._examples = (prepared.examples, prepared.texts)
        self._example_positions = prepared.positions
        self._vocabulary = prepared.vocabulary
        self._corrector = prepared.corrector
        self.fingerprint = prepared.fingerprint
        self._digests = prepared.digests
        if shared_version is not None:
            self.shared_version = shared_version
        self._version += 1
        for listener in self._listeners:
            listener()

    # -- queries ---------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Bumped on every change of the pattern set in this process."""
        return self._version

    def get(self, name: str) -> PatternDefinition | None:
        return self._patterns.get(name)

    def cache_identity(self, pattern: PatternDefinition | None) -> str:
        """What a cached result routed to ``pattern`` depends on in this set: the pattern's
        own definition. Routing runs before every cache lookup, so a query that another
        pattern takes after a change gets another key; results of patterns the change did
        not touch stay valid. A decision without a pattern (a type's default handler)
        depends on the whole set."""
        if pattern is not None and self._patterns.get(pattern.name) is pattern:
            return self._digests[pattern.name]
        return self.fingerprint

    def __contains__(self, name: object) -> bool:
        return name in self._patterns

    def __len__(self) -> int:
        return len(self._patterns)

    def patterns(self, pattern_type: PatternType | None = None) -> list[PatternDefinition]:
        return [p for p in self._patterns.values()
                if pattern_type is None or p.pattern_type is pattern_type]

    def best_match(self, query: str, pattern_type: PatternType | None = None
                   ) -> PatternDefinition | None:
        name = self._matcher.best(query, None if pattern_type is None else pattern_type.value)
        return None if name is None else self._patterns.get(name)

    def repaired(self, query: str, *, leave_out: bool = False) -> str:
        """``query`` with misspelled domain terms corrected in place (the typo corrector
        of the current pattern set); ``query`` itself when nothing was corrected.
        ``leave_out``: as :meth:`stage_two`."""
        return self._corrector.repair(query, corrections=self._corrections(query, leave_out))

    def _corrections(self, query: str, leave_out: bool) -> dict[str, str]:
        """The typo corrector's corrections of ``query``; the router asks twice per query
        (triggers, then stage 2), so the last answer is kept."""
        key = (query, leave_out, self._corrector)
        kept = self._last_corrections
        if kept is not None and kept[0] == key:
            return kept[1]
        own = self._example_positions.get(query.strip()) if leave_out else None
        fixes = self._corrector.corrections(
            query, left_out=self._examples[1][own] if own is not None else None)
        self._last_corrections = (key, fixes)
        return fixes

    def all_matches(self, query: str, pattern_type: PatternType | None = None
                    ) -> list[PatternDefinition]:
        names = self._matcher.all(query, None if pattern_type is None else pattern_type.value)
        return [self._patterns[n] for n in names if n in self._patterns]

    @property
    def example_count(self) -> int:
        return len(self._examples[1])

    def example_texts(self) -> list[str]:
        """Every pattern's example utterances, in index order (duplicates included)."""
        return list(self._examples[1])

    def attach_vectors(self, vectors: Sequence[Sequence[float] | None], weight: float) -> bool:
        """Attaches the embeddings of :meth:`example_texts` (same order) to stage 2's index.

        False, and nothing changes, if no example has a vector. The caller makes sure the
        pattern set did not change since it read the texts (no await in between).
        """
        index, texts = self._examples
        try:
            self._examples = (index.with_vectors(vectors, weight), texts)
        except ValueError:
            return False
        return True

    @property
    def routing_basis(self) -> object:
        """What stage-2 decisions depend on: replaced (a new object) whenever the pattern
        set or its example vectors change, so an identity check tells a kept decision is
        still current."""
        return self._examples

    @property
    def vectors_attached(self) -> bool:
        return self._examples[0].vector_dim is not None

    def nearest_examples(self, query: str, pattern_type: PatternType | None = None,
                         limit: int = 5, *, leave_out: bool = False,
                         vector: Sequence[float] | None = None) -> list[ExampleMatch]:
        """Patterns ranked by their closest example utterance (:meth:`stage_two`)."""
        return self.stage_two(query, pattern_type, limit, leave_out=leave_out,
                              vector=vector).candidates

    def stage_two(self, query: str, pattern_type: PatternType | None = None,
                  limit: int = 5, *, leave_out: bool = False,
                  vector: Sequence[float] | None = None) -> StageTwo:
        """Up to ``limit`` patterns (of ``pattern_type``, if given) ranked by their closest
        example utterance, and the closest off-topic example. Texts are compared as the
        lexicon normalises them: lexical TF-IDF cosine, blended with the embedding cosine
        when ``vector`` is given and the examples have vectors attached (without,
        ``vector`` is ignored).

        ``leave_out=True`` scores a query that is itself an example against the other
        examples only (leave-one-out calibration).
        """
        index, texts = self._examples
        exclude = None
        if leave_out:
            exclude = self._example_positions.get(query.strip())
        if index.vector_dim is None:
            vector = None
        left_out = texts[exclude] if exclude is not None else None
        normalized = self.lexicon.normalize(self._corrector.correct(
            query, corrections=self._corrections(query, leave_out)))
        # A word no indexed text has carries no evidence; its character n-grams only
        # add chance resemblances ("linesu" to "pickup line").
        known = self._indexed_words(index, texts)
        classify_text = " ".join(w for w in normalized.split() if w in known)
        # Negatives and off-topic examples take slots; a pattern's negative that beats it
        # ranks above it, so within these slots whenever the pattern is.
        wanted = 2 * limit + 1
        kind = None if pattern_type is None else pattern_type.value
        found: list[tuple[str, float, int]]
        if vector is None:
            found = [(name, p, example) for name, p, example, _ in
                     index.classify(classify_text, wanted, kind, exclude)]
            if kind is not None:
                found += [(name, p, example) for name, p, example, _ in
                          index.classify(classify_text, 1, _OFF_TOPIC_KIND, exclude)]
        else:
            found = index.score(normalized, wanted, kind, exclude, vector)
            if kind is not None:
                found += index.score(normalized, 1, _OFF_TOPIC_KIND, exclude, vector)
        candidates: list[ExampleMatch] = []
        beaten: set[str] = set()
        off_topic: ExampleMatch | None = None
        for name, score, example in found:
            if name == OFF_TOPIC:
                off_topic = ExampleMatch(name, round(score, 4), texts[example])
            elif name.startswith(_NEGATIVE):
                beaten.add(name[len(_NEGATIVE):])
            elif name not in beaten and len(candidates) < limit:
                candidates.append(ExampleMatch(name, round(score, 4), texts[example]))
        content = self.lexicon.content_words(normalized)
        # Left out, the query's own words count once less (its own example is not known).
        own = 1 if left_out == query.strip() else 0
        vocabulary = self._vocabulary
        unknown_words = sum(vocabulary.get(word, 0) <= own for word in content)
        unknown = unknown_words / len(content) if content else None
        return StageTwo(candidates, off_topic, unknown, len(content) - unknown_words)

    def _indexed_words(self, index: ExampleIndex, texts: list[str]) -> frozenset[str]:
        """Every word of the indexed texts as normalised (once per pattern-set version)."""
        kept = self._indexed
        if kept is None or kept[0] is not index:
            kept = (index, frozenset(w for text in texts
                                     for w in self.lexicon.normalize(text).split()))
            self._indexed = kept
        return kept[1]

    def captures(self, pattern: PatternDefinition, query: str) -> dict[str, str]:
        return self._matcher.captures(pattern.name, query) or {}

    def text_after_trigger(self, pattern: PatternDefinition, query: str) -> str:
        """The query's text after the pattern's first trigger match (all of it if none)."""
        span = self._matcher.span(pattern.name, query)
        if span is None:  # it fired on the query with its typos corrected
            query = self.repaired(query)
            span = self._matcher.span(pattern.name, query)
        return query[span[1]:].strip() if span is not None else query.strip()

    def get_stats(self) -> dict[str, Any]:
        by_type = {t.value: 0 for t in PatternType}
        for pattern in self._patterns.values():
            by_type[pattern.pattern_type.value] += 1
        cache = self._matcher.cache_stats()
        lookups = cache["hits"] + cache["misses"]
        return {
            "total_patterns": len(self._patterns),
            "patterns_by_type": by_type,
            "version": self.version,
            "shared_version": self.shared_version,
            "match_cache": {**cache,
                            "hit_rate": 100.0 * cache["hits"] / lookups if lookups else 0.0},
        }
