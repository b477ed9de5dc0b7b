"""Routing language knowledge: a synonym lexicon, stemming and off-topic examples.

Stage 2 of the router compares words. A query phrased in other words than the pattern
examples ("jot down …" against "make a note that …") shares none of them, so before a text
enters the example index — examples when the index is built, queries when they are scored —
it is *normalised*:

1. lowercased and split into words (runs of letters and digits), every word of four or
   more characters reduced to its Snowball (Porter 2) English stem, so inflections meet
   ("configured" = "configure", "memories" = "memory") — in Rust, :func:`stemmed_words`;
3. the longest lexicon phrase starting at each word replaced by its canonical word
   ("roll up" → ``summarize``, "keep in mind" → ``store``, "alive" → ``up``).

The shipped lexicon (``tmws/data/routing_lexicon.yaml``) knows the agent-operations domain;
pattern authors extend it with a file of the same shape (``TMWS_ROUTER_LEXICON``,
``tmws patterns eval --lexicon``). Its ``off_topic`` examples are indexed as a pseudo
pattern: a query closest to one of them is off-topic and the router abstains.

Normalising costs a few microseconds per query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from tmws._native import stemmed_words
from tmws.errors import PatternConfigError

__all__ = ["RoutingLexicon", "TypoCorrector", "shipped_lexicon_path"]

_MAX_PHRASE_WORDS: Final = 6
_WORD: Final = re.compile(r"[^\W_]+")
# Shorter words have too many real words one edit away ("batch" / "match").
_MIN_CORRECTED_CHARS: Final = 6
_MIN_SWAPPED_CHARS: Final = 4
_ALWAYS_KNOWN: Final = 1 << 30  # a lexicon term: known however many texts are left out
# Words that say nothing about a request's domain (compared after stemming).
_FUNCTION_WORDS: Final = frozenset(
    "a an the of to in on for with at by from and or but not no is are was were be been "
    "being am do does did done have has had i me my mine we our ours us you your yours it "
    "its they them their he she his her this that these those what which who whom whose "
    "how when where why can could would should will shall may might must please any all "
    "some there here about into onto over under just now then than so very too also "
    "again get got let lets give gimme tell show find make want need like know".split())


def shipped_lexicon_path() -> Path:
    return Path(str(resources.files("tmws") / "data" / "routing_lexicon.yaml"))


_STEMMED_FUNCTION_WORDS: Final = frozenset(stemmed_words(" ".join(_FUNCTION_WORDS)))


class RoutingLexicon:
    """Synonyms (variant phrase → canonical word) and off-topic examples; immutable."""

    def __init__(self, synonyms: Mapping[str, Sequence[str]] | None = None,
                 off_topic: Sequence[str] = (), *, source: str = "lexicon") -> None:
        self.source = source
        self.synonyms: dict[str, tuple[str, ...]] = {}
        self.off_topic: tuple[str, ...] = tuple(dict.fromkeys(
            q.strip() for q in off_topic if q.strip()))
        # Keyed by the variant's stemmed words, so inflections of a variant match too.
        self._phrases: dict[tuple[str, ...], str] = {}
        self._first_words: set[str] = set()
        self._canonicals: dict[str, str] = {}  # stem -> canonical as written
        for canonical, variants in (synonyms or {}).items():
            self._add(canonical, variants)

    def _add(self, canonical: str, variants: Iterable[str]) -> None:
        words = stemmed_words(canonical)
        if len(words) != 1:
            raise PatternConfigError(
                f"synonyms: canonical {canonical!r} must be one word", source=self.source)
        target = words[0]
        if (target,) in self._phrases:
            raise PatternConfigError(
                f"synonyms: canonical {canonical!r} is already a variant of "
                f"{self._canonicals[self._phrases[(target,)]]!r}", source=self.source)
        self._canonicals.setdefault(target, canonical)
        kept = list(self.synonyms.get(canonical, ()))
        for variant in variants:
            if not isinstance(variant, str):
                raise PatternConfigError(
                    f"synonyms: {canonical!r}: variants must be strings, got {variant!r}",
                    source=self.source)
            key = tuple(stemmed_words(variant))
            if not key or len(key) > _MAX_PHRASE_WORDS:
                raise PatternConfigError(
                    f"synonyms: {canonical!r}: variant {variant!r} must have 1 to "
                    f"{_MAX_PHRASE_WORDS} words", source=self.source)
            if key == (target,):
                # The canonical's own stem (an inflection, or a misspelling the stemmer
                # folds: "recal"): nothing to map, but kept as a spelling.
                if variant not in kept:
                    kept.append(variant)
                continue
            if len(key) == 1 and key[0] in self._canonicals:
                raise PatternConfigError(
                    f"synonyms: variant {variant!r} of {canonical!r} is itself a canonical "
                    "word", source=self.source)
            known = self._phrases.get(key)
            if known is not None and known != target:
                raise PatternConfigError(
                    f"synonyms: variant {variant!r} of {canonical!r} is already a variant "
                    f"of {self._canonicals[known]!r}", source=self.source)
            self._phrases[key] = target
            self._first_words.add(key[0])
            kept.append(variant)
        self.synonyms[canonical] = tuple(kept)

    @classmethod
    def from_mapping(cls, document: Any, *, source: str) -> RoutingLexicon:
        """A lexicon from a parsed YAML document: ``synonyms`` (canonical → variants) and
        ``off_topic`` (a list of queries); PatternConfigError names what is wrong."""
        if document is None:
            document = {}
        if not isinstance(document, Mapping):
            raise PatternConfigError("a lexicon file must be a mapping with synonyms and "
                                     "off_topic", source=source)
        unknown = sorted(set(document) - {"synonyms", "off_topic"})
        if unknown:
            raise PatternConfigError(f"unknown key(s) {', '.join(map(str, unknown))}; "
                                     "allowed: off_topic, synonyms", source=source)
        synonyms = document.get("synonyms") or {}
        if not isinstance(synonyms, Mapping) or not all(
                isinstance(k, str) and isinstance(v, list) for k, v in synonyms.items()):
            raise PatternConfigError("synonyms must map a canonical word to a list of "
                                     "variants", source=source)
        off_topic = document.get("off_topic") or []
        if not isinstance(off_topic, list) or not all(isinstance(q, str) for q in off_topic):
            raise PatternConfigError("off_topic must be a list of strings", source=source)
        return cls(synonyms, off_topic, source=source)

    @classmethod
    def load(cls, path: str | Path) -> RoutingLexicon:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PatternConfigError(f"cannot read the lexicon: {exc.strerror or exc}",
                                     source=str(path)) from None
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PatternConfigError(f"invalid YAML: {exc}", source=str(path)) from None
        return cls.from_mapping(document, source=str(path))

    @classmethod
    def shipped(cls, extra: str | Path | None = None) -> RoutingLexicon:
        """The shipped lexicon, extended by the file ``extra`` if given."""
        base = _shipped()
        return base if extra is None else base.extended(cls.load(extra))

    def extended(self, other: RoutingLexicon) -> RoutingLexicon:
        """This lexicon with ``other``'s synonyms and off-topic examples added; a variant
        the two map to different canonicals is an error naming ``other``'s file."""
        merged = RoutingLexicon(self.synonyms, self.off_topic, source=other.source)
        for canonical, variants in other.synonyms.items():
            merged._add(canonical, variants)
        merged.off_topic = tuple(dict.fromkeys((*self.off_topic, *other.off_topic)))
        return merged

    def normalize(self, text: str) -> str:
        """``text`` as the example index sees it: stemmed words, lexicon phrases replaced
        by their canonical word, joined by spaces."""
        words = stemmed_words(text)
        if not self._phrases:
            return " ".join(words)
        out: list[str] = []
        i, n = 0, len(words)
        while i < n:
            if words[i] in self._first_words:
                for length in range(min(_MAX_PHRASE_WORDS, n - i), 0, -1):
                    target = self._phrases.get(tuple(words[i:i + length]))
                    if target is not None:
                        out.append(target)
                        i += length
                        break
                else:
                    out.append(words[i])
                    i += 1
            else:
                out.append(words[i])
                i += 1
        return " ".join(out)

    @property
    def terms(self) -> frozenset[str]:
        """Every word of the synonyms as written (lowercased): the domain's terms."""
        texts = [*self.synonyms, *(v for vs in self.synonyms.values() for v in vs)]
        return frozenset(w for text in texts for w in _WORD.findall(text.lower()))

    @property
    def spellings(self) -> dict[str, str]:
        """The one-word variants that are misspellings of their canonical word (one edit
        away: "remeber", "configre"), each with that word; the triggers are retried on
        the corrected spelling. Variants two edits away are often other words
        ("summaries", "reinstall", "memos"), and a letter added at the end is an
        inflection ("healthy")."""
        return {variant: canonical for canonical, variants in self.synonyms.items()
                for variant in (v.lower() for v in variants)
                if variant.isalpha() and _one_edit(variant, canonical)
                and not variant.startswith(canonical)}

    @property
    def vocabulary(self) -> frozenset[str]:
        """Every stemmed word the synonyms know (canonicals and the words of variants)."""
        return frozenset(self._canonicals) | {w for key in self._phrases for w in key}

    def content_words(self, normalized: str) -> list[str]:
        """The words of a :meth:`normalize` output that can say what the text is about:
        not function words, not numbers, at least three letters."""
        return [w for w in normalized.split()
                if len(w) > 2 and not w.isdigit() and w not in _STEMMED_FUNCTION_WORDS]

    def __len__(self) -> int:
        return len(self._phrases)


class TypoCorrector:
    """Replaces a query word by a domain term one edit away ("summraize" → "summarize",
    "contarst" → "contrast"): a deletion, insertion, substitution or swap of adjacent
    letters. The terms are the lexicon's words (their frequency: how many examples use
    them); a word the examples, the lexicon or its off-topic examples use, or shorter
    than six characters, stays. Without a
    dictionary of English, correcting towards any word the examples use would turn real
    words into others ("shipping" → "shopping"). Among several terms the most frequent
    wins (then the first in alphabetical order). Candidates are found through
    single-character deletions (the SymSpell idea): each term is indexed under itself and
    its deletions, and an unknown word looks up the same."""

    def __init__(self, frequencies: dict[str, int], known: Mapping[str, int] | None = None,
                 spellings: Mapping[str, str] | None = None) -> None:
        """``frequencies``: the terms a word may be corrected to, with their weight;
        ``known``: words never corrected (they are real: the examples use them), with the
        number of texts using each (so a left-out text's own words can be discounted);
        ``spellings``: misspellings the lexicon lists, always corrected to their word
        (:attr:`RoutingLexicon.spellings`)."""
        self._terms = frequencies
        self._spellings = dict(spellings or {})
        self._known = dict(known or {})
        for word in frequencies:
            self._known[word] = _ALWAYS_KNOWN
        index: dict[str, str] = {}
        for word in sorted(frequencies, key=lambda w: (-frequencies[w], w)):
            if len(word) < _MIN_SWAPPED_CHARS:
                continue
            for key in (word, *_deletions(word)):
                index.setdefault(key, word)
        self._index = index

    @staticmethod
    def words_of(text: str) -> list[str]:
        """The lowercased words of ``text``, as :meth:`correct` sees them."""
        return _WORD.findall(text.lower())

    def corrections(self, text: str, *, left_out: str | None = None) -> dict[str, str]:
        """The misspelled words of ``text`` (lowercased), each with its correction.
        ``left_out``: a known text scored as if it were not known (leave-one-out), so the
        words only it uses count as unknown."""
        own = set(self.words_of(left_out)) if left_out is not None else set()
        fixes = {}
        for word in set(_WORD.findall(text.lower())):
            fixed = self._corrected(word, word in own)
            if fixed != word:
                fixes[word] = fixed
        return fixes

    def correct(self, text: str, *, left_out: str | None = None,
                corrections: Mapping[str, str] | None = None) -> str:
        """``text`` lowercased, as words joined by spaces, unknown words corrected
        (``corrections``: :meth:`corrections` of ``text``, if already known)."""
        if corrections is None:
            corrections = self.corrections(text, left_out=left_out)
        words = _WORD.findall(text.lower())
        return " ".join([corrections.get(w, w) for w in words] if corrections else words)

    def repair(self, text: str, *, left_out: str | None = None,
               corrections: Mapping[str, str] | None = None) -> str:
        """``text`` with each misspelled word replaced in place by its correction (case,
        punctuation and spacing kept): what the triggers are tried on when the text as
        written matches none. ``left_out`` and ``corrections``: as :meth:`correct`."""
        if corrections is None:
            corrections = self.corrections(text, left_out=left_out)
        if not corrections:
            return text
        fixes = corrections
        return _WORD.sub(lambda m: fixes.get(m.group().lower(), m.group()), text)

    def _corrected(self, word: str, own: bool = False) -> str:
        spelled = self._spellings.get(word)
        if spelled is not None:
            return spelled
        if (len(word) < _MIN_SWAPPED_CHARS or word.isdigit()
                or self._known.get(word, 0) > own):
            return word
        index = self._index
        best: str | None = None
        # A short word one edit from a term is often another real word ("shark", "share");
        # two swapped letters rarely make one ("lable", "hihg").
        edited = _one_edit if len(word) >= _MIN_CORRECTED_CHARS else _swapped
        for key in (word, *_deletions(word)):
            found = index.get(key)
            if found is not None and edited(word, found) and not _inflected(word, found) and (
                    best is None or (-self._terms[found], found) < (-self._terms[best], best)):
                best = found
        return word if best is None else best


def _deletions(word: str) -> list[str]:
    return [word[:i] + word[i + 1:] for i in range(len(word))]


def _inflected(word: str, term: str) -> bool:
    """True if ``word`` is ``term`` with an inflection added ("counts", "configured"): a
    real word, not a typo."""
    return word.startswith(term) and word[len(term):] in ("s", "d")


def _swapped(a: str, b: str) -> bool:
    """True if ``a`` is ``b`` with two adjacent letters swapped."""
    if len(a) != len(b) or a == b:
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return (len(diff) == 2 and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])


def _one_edit(a: str, b: str) -> bool:
    """True if ``a`` and ``b`` differ by exactly one insertion, deletion, substitution or
    swap of adjacent characters."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1:]
    return a[i + 1:] == b[i + 1:] or (
        i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2:] == b[i + 2:])


@cache
def _shipped() -> RoutingLexicon:
    return RoutingLexicon.load(shipped_lexicon_path())
