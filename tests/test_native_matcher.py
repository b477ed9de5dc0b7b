"""Python-level tests of the native matcher (``tmws._native``).

The property test checks that the Rust core picks the same patterns as the plain-Python
``ReferenceMatcher`` (priority-ordered ``re.search`` with ``re.IGNORECASE``).
"""

from __future__ import annotations

import pickle
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tmws.errors
from tests.reference_matcher import ReferenceMatcher
from tmws._native import Matcher, PatternCompileError, __version__

Spec = tuple[str, str, int, str]

LIBRARY: list[Spec] = [
    ("run", r"(?P<verb>run|execute)\s+(?P<target>\w+)", 3, "tool"),
    ("run_tool", r"run\s+tool", 3, "tool"),
    ("health", r"check\s+(health|status)", 5, "ops"),
    ("anything", r"\w+", 1, "fallback"),
    ("urgent", r"\burgent\b", 9, "ops"),
]


@pytest.fixture
def matcher() -> Matcher:
    return Matcher(LIBRARY, cache_capacity=0)


def test_version_string() -> None:
    assert isinstance(__version__, str) and __version__


def test_priority_order(matcher: Matcher) -> None:
    assert matcher.best("urgent: check health") == "urgent"
    assert matcher.best("Check   HEALTH") == "health"
    assert matcher.best("!!!") is None


def test_ties_break_by_registration_order() -> None:
    assert Matcher(LIBRARY).best("run tool") == "run"
    assert Matcher([LIBRARY[1], LIBRARY[0]]).best("run tool") == "run_tool"


def test_all_in_priority_order(matcher: Matcher) -> None:
    assert matcher.all("URGENT run tool") == ["urgent", "run", "run_tool", "anything"]
    assert matcher.all("...") == []


def test_kind_filter(matcher: Matcher) -> None:
    assert matcher.best("urgent run tool", "tool") == "run"
    assert matcher.best("urgent run tool", kind="fallback") == "anything"
    assert matcher.best("urgent run tool", kind="unknown") is None
    assert matcher.all("urgent check status", kind="ops") == ["urgent", "health"]


def test_captures(matcher: Matcher) -> None:
    assert matcher.captures("run", "please EXECUTE backups") == {
        "verb": "EXECUTE",
        "target": "backups",
    }
    assert matcher.captures("run", "nothing") is None
    assert matcher.captures("health", "check health") == {}
    # No named group: answered by a plain search, with the same None/{} contract.
    assert matcher.captures("health", "check the weather") is None
    assert matcher.captures("health", "") is None
    empty = Matcher([("empty", r"x*", 1, "k"), ("dollar", r"done$", 1, "k")])
    assert empty.captures("empty", "") == {}
    assert empty.captures("dollar", "all done\n") == {}
    assert empty.captures("dollar", "done twice, not done yet") is None
    with pytest.raises(KeyError):
        matcher.captures("missing", "run x")
    optional = Matcher([("opt", r"a(?P<x>x)?(?P<y>y)?", 1, "k")])
    assert optional.captures("opt", "ay") == {"y": "y"}


def test_len_names_repr(matcher: Matcher) -> None:
    assert len(matcher) == 5
    assert matcher.names() == [spec[0] for spec in LIBRARY]
    assert "patterns=5" in repr(matcher)


def test_cache_stats_and_eviction() -> None:
    m = Matcher(LIBRARY, cache_capacity=3)
    for query in ["run a", "run a", "run b", "run c", "run d"]:
        m.best(query)
    stats = m.cache_stats()
    assert stats == {"hits": 1, "misses": 4, "size": 3, "capacity": 3, "evictions": 1}
    m.clear_cache()
    assert m.cache_stats()["size"] == 0


def test_cache_disabled() -> None:
    m = Matcher(LIBRARY, cache_capacity=0)
    m.best("run a")
    m.best("run a")
    assert m.cache_stats() == {"hits": 0, "misses": 2, "size": 0, "capacity": 0, "evictions": 0}


def test_replace() -> None:
    m = Matcher(LIBRARY, warmup=["run tool"])
    assert m.version == 1
    assert m.best("run tool") == "run"
    assert m.replace([("only", "tool", 1, "k")], warmup=["tool"]) == 2
    assert m.version == 2
    assert len(m) == 1
    # Fresh cache: the old answer for this query is gone.
    assert m.best("run tool") == "only"
    assert m.cache_stats()["hits"] == 0


def test_failed_replace_keeps_old_matcher() -> None:
    m = Matcher(LIBRARY)
    with pytest.raises(PatternCompileError) as info:
        m.replace([("fine", "x", 1, "k"), ("bad", r"(?<=x)y", 1, "k")])
    assert info.value.pattern_name == "bad"
    assert m.version == 1
    assert m.best("check health") == "health"


@pytest.mark.parametrize(
    ("regex", "reason"),
    [
        (r"run(?=x)", "look-around"),
        (r"(?<!x)run", "look-around"),
        (r"(a)\1", "backreferences"),
        (r"(unclosed", "missing ), unterminated subpattern"),
        (r"\w{2000}", "size limit"),
    ],
)
def test_rejections(regex: str, reason: str) -> None:
    with pytest.raises(PatternCompileError) as info:
        Matcher.check("trigger", regex)
    err = info.value
    assert err.pattern_name == "trigger"
    assert reason in err.reason
    assert "trigger" in str(err) and reason in str(err)
    with pytest.raises(tmws.errors.PatternError):
        Matcher([("ok", "x", 1, "k"), ("trigger", regex, 1, "k")])


def test_duplicate_names_rejected() -> None:
    with pytest.raises(PatternCompileError, match="duplicate") as info:
        Matcher([("dup", "a", 1, "k"), ("dup", "b", 2, "k")])
    assert info.value.pattern_name == "dup"


def test_error_type() -> None:
    assert issubclass(PatternCompileError, tmws.errors.PatternError)
    assert tmws.errors.PatternCompileError is PatternCompileError
    err = PatternCompileError("name", "why")
    assert (err.pattern_name, err.reason) == ("name", "why")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.pattern_name, copy.reason, str(copy)) == ("name", "why", str(err))


@pytest.mark.parametrize(
    "query",
    [
        "CAFÉ au lait",
        "café",
        "cafe",
        "STRAẞE",
        "straße",
        "STRASSE",
        "\u212aelvin",
        "KELVIN",
        "ΑΒΓ",
        "σοφία",
        "ΣΟΦΊΑ",
        "plain ascii",
        "\u017fun",
        "SUN",
        "",
    ],
)
def test_unicode_matches_python_re(query: str) -> None:
    specs: list[Spec] = [
        ("cafe", "café", 6, "k"),
        ("strasse", "straße", 5, "k"),
        ("kelvin", r"\bk\w+", 4, "k"),
        ("greek", r"[\u0370-\u03ff\u1f00-\u1fff]+", 3, "k"),
        ("sofia", r"σοφία", 2, "k"),
        ("sun", r"\bsun", 1, "k"),
    ]
    m = Matcher(specs)
    reference = ReferenceMatcher(specs)
    assert m.all(query) == reference.all(query)
    assert m.best(query) == reference.best(query)


def test_concurrent_reads_during_replace() -> None:
    m = Matcher(LIBRARY)
    other: list[Spec] = [("other", "health", 1, "k")]
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(2000):
                assert m.best("check health") in ("health", "other")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        m.replace(other)
        m.replace(LIBRARY)
    for t in threads:
        t.join()
    assert not errors
    assert m.version == 11


# --- property test against the Python reference -------------------------------------------

WORDS = [
    "run",
    "tool",
    "check",
    "health",
    "get",
    "memory",
    "deploy",
    "app",
    "log",
    "logs",
    "status",
    "the",
    "my",
    "café",
    "straße",
    "on",
]

word_group = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3, unique=True).map(
    lambda ws: "(" + "|".join(ws) + ")"
)
atom = st.one_of(
    word_group,
    word_group.map(lambda g: g + "?"),
    st.sampled_from([r"\w+", r"\w*", ".*", r"[a-f]", r"[^aeiou ]+", r"\d"]),
)
separator = st.sampled_from([r"\s+", r"\s*", " ", ".*", ""])


@st.composite
def regexes(draw: st.DrawFn) -> str:
    atoms = draw(st.lists(atom, min_size=1, max_size=4))
    body = atoms[0]
    for a in atoms[1:]:
        body += draw(separator) + a
    if draw(st.booleans()):
        body = r"\b" + body
    if draw(st.booleans()):
        body += r"\b"
    return body


specs_strategy = st.lists(
    st.tuples(regexes(), st.integers(0, 3), st.sampled_from(["a", "b"])),
    min_size=1,
    max_size=12,
).map(lambda xs: [(f"p{i}", r, p, k) for i, (r, p, k) in enumerate(xs)])

query_token = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(WORDS).map(str.upper),
    st.sampled_from(WORDS).map(str.title),
    st.text(alphabet="abcdefxyz019 _-.,!éÉßẞ\u212a\u03a3\u03c3", max_size=6),
)
queries_strategy = st.lists(st.lists(query_token, max_size=8).map(" ".join), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=specs_strategy, queries=queries_strategy, kind=st.sampled_from([None, "a", "b"]))
def test_same_choice_as_python_re(specs: list[Spec], queries: list[str], kind: str | None) -> None:
    reference = ReferenceMatcher(specs)
    native = Matcher(specs, cache_capacity=16)
    for query in queries:
        assert native.best(query, kind) == reference.best(query, kind), query
        assert native.all(query, kind) == reference.all(query, kind), query
        # Second call goes through the cache.
        assert native.best(query, kind) == reference.best(query, kind), query
