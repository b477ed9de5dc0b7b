"""Trigger regexes mean what they mean in Python ``re`` (str patterns, ``re.IGNORECASE``).

Three checks: the vendored peer suites (rust-lang/regex, RE2, CPython) agree with ``re`` on
every pair whose pattern tmws accepts, and every refusal names a construct tmws refuses by
design; the generated Rust character tables equal what this Python's ``re`` matches over all
code points; and hypothesis patterns from a grammar of the accepted dialect, searched in
random (Unicode) queries, agree with ``re.search``.
"""

# ruff: noqa: RUF001  (dotless i, long s, sigma: the case-folding characters under test)
from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.regex_peers import run_peer_suite
from tmws._native import Matcher, PatternCompileError

_ROOT = Path(__file__).resolve().parent.parent
# The constructs refused by design (linear time), each named in the refusal.
_DESIGNED_REFUSALS = (
    "backreference",
    "look-ahead",
    "look-behind",
    "conditional groups",
    "possessive quantifiers",
    "atomic groups",
    "named character escapes",
    "`$` followed by more pattern",
)


def test_peer_suites_agree_with_python_re() -> None:
    outcome = run_peer_suite()
    assert outcome.disagree == []
    unexplained = {
        p: reason for p, reason in outcome.refused.items()
        if not any(construct in reason for construct in _DESIGNED_REFUSALS)
    }
    assert unexplained == {}
    # The suites exercise the translation: most pairs are compared, not refused.
    assert outcome.agree > 2000
    assert len(outcome.refused) < 80


def test_character_tables_are_pythons() -> None:
    """``pyre_tables.rs`` is what ``rust_core/gen/pyre_tables.py`` derives from ``re`` now."""
    result = subprocess.run(
        [sys.executable, str(_ROOT / "rust_core" / "gen" / "pyre_tables.py"), "--check"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr


def _agrees(pattern: str, queries: list[str], *, whole_span: bool = True) -> None:
    """tmws finds ``pattern`` where ``re`` does, starting where ``re``'s match starts (and
    ending there too with ``whole_span``: Python ends a repetition early when an iteration
    matches empty, so ends may differ for repeated subpatterns that can match empty)."""
    expected = re.compile(pattern, re.IGNORECASE)
    matcher = Matcher([("p", pattern, 0, "k")], cache_capacity=0)
    for query in queries:
        want = expected.search(query)
        assert (matcher.best(query) is not None) == (want is not None), (pattern, query)
        span = matcher.span("p", query)
        if want is None:
            assert span is None
        elif whole_span:
            assert span == want.span(), (pattern, query)
        else:
            assert span is not None and span[0] == want.start(), (pattern, query)


@pytest.mark.parametrize(
    ("pattern", "queries"),
    [
        (r"\w+", ["²", "¼", "e\u0301", "_", "\u001c"]),
        (r"\s", ["\u001c", "\u001f", "\x85", "\u00a0", "\u200b"]),
        (r"\d", ["٣", "²", "½"]),
        (r"i", ["ı", "İ", "I"]),
        (r"s", ["ſ", "S"]),
        (r"k", ["\u212a", "K"]),
        (r"[a-z]+", ["\u212a", "ſ", "İ"]),
        (r"[^k]", ["\u212a"]),
        (r"\u212a", ["k", "K"]),
        (r"abc$", ["abc", "abc\n", "abc\n\n", "abcd"]),
        (r"(?P<w>\w+)$", ["hi\n", "hi"]),
        (r"a$\n", ["a\n", "a"]),
        (r"\B", ["", "a", " "]),
        (r"^\B$", ["", " "]),
        (r"\Z", ["", "x"]),
        (r"\0\141[\1]\060[\b]", ["\0a\x010\b"]),
        (r"a(?#comment)b", ["ab"]),
        (r"\b{start}", ["a{start}", "a"]),
        (r"[[:upper:]]", ["u]", "A"]),
        (r"x{,2}y", ["xxy"]),
        (r"(?x) a b # comment", ["ab"]),
        (r"(?s:.)", ["\n"]),
        (r"(?m)^b$", ["a\nb\nc"]),
        (r"(?a)\w", ["é", "e"]),
        (r"(?-i:K)", ["k", "K"]),
    ],
)
def test_python_meanings(pattern: str, queries: list[str]) -> None:
    _agrees(pattern, queries)


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        (r"(a)\1", "backreferences"),
        (r"(?P<n>a)(?P=n)", "backreference (?P=n)"),
        (r"a(?=b)", "look-ahead"),
        (r"(?<=a)b", "look-behind"),
        (r"(a)?(?(1)b|c)", "conditional groups"),
        (r"a++", "possessive quantifiers"),
        (r"(?>a)", "atomic groups"),
        (r"\N{EM DASH}", "named character escapes"),
        (r"(a$)b", "`$` followed by more pattern"),
        (r"\p{L}", "bad escape \\p"),
    ],
)
def test_refusals_name_the_construct(pattern: str, construct: str) -> None:
    with pytest.raises(PatternCompileError, match=re.escape(construct)):
        Matcher.check("p", pattern)


# Characters where Python's and other engines' notions of case, word and space differ.
_TRICKY = "iIıİsSſkK\u212aσςΣµμéÉßẞ²¼٣_\u0301\u001c\u00a0\n "
_ALPHABET = st.sampled_from("abcxyzABC019-. " + _TRICKY)


def _escape_char(c: str) -> str:
    return re.escape(c)


_ATOMS = st.one_of(
    _ALPHABET.map(_escape_char),
    st.sampled_from([r"\w", r"\W", r"\d", r"\D", r"\s", r"\S", ".", r"\b", r"\B", "^", r"\A",
                     r"\Z", r"[a-c]", r"[^a-c]", r"[\w.]", r"[^\s\d]", r"[i-k]", r"[ſ-ſ]",
                     r"[Σ]", r"[^ı]", r"[\x00-\x7f]", r"\x41", r"\u212a", r"\0"]),
    st.lists(_ALPHABET, min_size=1, max_size=3).map(
        lambda cs: "[" + "".join(_escape_char(c) for c in cs) + "]"),
)


def _quantified(atom: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(atom, st.sampled_from(["", "", "*", "+", "?", "{1,2}", "*?", "{,2}"])).map(
        lambda t: t[0] + t[1] if not (t[1] and t[0] in ("^", r"\A", r"\Z", r"\b", r"\B")) else t[0])


_PATTERNS = st.recursive(
    st.lists(_quantified(_ATOMS), min_size=1, max_size=4).map("".join),
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda t: f"{t[0]}|{t[1]}"),
        st.tuples(st.sampled_from(["(", "(?:", "(?P<g>", "(?-i:", "(?a:", "(?s:", "(?m:"]),
                  inner, st.sampled_from(["", "*", "?", "+"])).map(
            lambda t: f"{t[0]}{t[1]}){t[2]}"),
    ),
    max_leaves=6,
)


def _word_boundary_safe(query: str) -> str:
    """Drops the characters on which regex-automata's Unicode word boundary is not Python's
    (marks, "other numbers"...): the one difference left, documented in the .pyi."""
    def same(c: str) -> bool:
        category = unicodedata.category(c)
        rust_word = category[0] in "LM" or category in ("Nd", "Nl", "Pc")
        return c.isascii() or (c.isalnum() or c == "_") == rust_word

    return "".join(c for c in query if same(c))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PATTERNS, st.lists(st.text(_ALPHABET, max_size=8), min_size=1, max_size=6))
def test_generated_patterns_agree_with_re(pattern: str, queries: list[str]) -> None:
    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error:
        return
    try:
        Matcher.check("p", pattern)
    except PatternCompileError as exc:
        assert any(c in str(exc) for c in _DESIGNED_REFUSALS), (pattern, str(exc))
        return
    if r"\b" in pattern or r"\B" in pattern:
        queries = [_word_boundary_safe(q) for q in queries]
    _agrees(pattern, queries, whole_span=False)
