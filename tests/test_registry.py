"""The registry over the Rust matcher, checked case by case against the Python reference."""

from __future__ import annotations

import msgspec
import pytest

from tests.reference_matcher import ReferenceMatcher
from tmws.errors import PatternConfigError, PatternError
from tmws.lexicon import RoutingLexicon
from tmws.models import PatternDefinition, PatternType
from tmws.registry import PatternRegistry


def pattern(name: str, trigger: str, priority: int = 0,
            kind: PatternType = PatternType.INFRASTRUCTURE) -> PatternDefinition:
    return PatternDefinition(name=name, pattern_type=kind, trigger_pattern=trigger,
                             priority=priority)


LIBRARY = [
    pattern("health", r"(check|test|verify)\s+(health|status)", 8),
    pattern("tool", r"(run|execute|call)\s+(tool|mcp|function)", 10),
    pattern("recall", r"(recall|retrieve)\s+(memory|memories)", 9, PatternType.MEMORY),
    pattern("store", r"(store|save|remember)\s+", 8, PatternType.MEMORY),
    pattern("similar", r"(find|search)\s+(similar|related)", 10, PatternType.HYBRID),
    pattern("recent", r"(recent|latest)\s+\w+", 6, PatternType.HYBRID),
    pattern("tie_a", r"\bzeta\b", 5),
    pattern("tie_b", r"zeta\s+\w+", 5, PatternType.MEMORY),
]

CASES: list[tuple[str, PatternType | None, str | None]] = [
    ("check health", None, "health"),
    ("CHECK   HEALTH now", None, "health"),
    ("please run tool x then check health", None, "tool"),
    ("recall memories about auth", None, "recall"),
    ("remember to recall memories", None, "recall"),
    ("remember this", None, "store"),
    ("find similar incidents from recent deploys", None, "similar"),
    ("latest deploys", None, "recent"),
    ("zeta function", None, "tie_a"),  # equal priority: earlier registration wins
    ("zeta function", PatternType.MEMORY, "tie_b"),
    ("recall memories and run tool", PatternType.MEMORY, "recall"),
    ("recall memories", PatternType.INFRASTRUCTURE, None),
    ("tell me a joke", None, None),
    ("", None, None),
    ("Ünïcode: RECALL MEMORIES über alles", None, "recall"),
]


@pytest.fixture(scope="module")
def registry() -> PatternRegistry:
    return PatternRegistry(LIBRARY)


@pytest.fixture(scope="module")
def reference() -> ReferenceMatcher:
    return ReferenceMatcher([(p.name, p.trigger_pattern, p.priority, p.pattern_type.value)
                             for p in LIBRARY])


@pytest.mark.parametrize(("query", "kind", "expected"), CASES)
def test_rust_and_reference_agree(registry: PatternRegistry, reference: ReferenceMatcher,
                                  query: str, kind: PatternType | None,
                                  expected: str | None) -> None:
    best = registry.best_match(query, kind)
    assert (best.name if best else None) == expected
    assert reference.best(query, None if kind is None else kind.value) == expected
    assert [p.name for p in registry.all_matches(query, kind)] == reference.all(
        query, None if kind is None else kind.value)


def test_failed_registration_leaves_registry_unchanged() -> None:
    registry = PatternRegistry(LIBRARY[:2])
    version = registry.version
    bad = [pattern("fine", "fine"), pattern("broken", r"(?=lookahead)")]
    with pytest.raises(PatternError, match="broken"):
        registry.register_batch(bad)
    assert len(registry) == 2 and "fine" not in registry
    assert registry.version == version
    assert registry.best_match("check health") is not None


def test_duplicate_registration_is_rejected_unless_replacing() -> None:
    registry = PatternRegistry(LIBRARY[:1])
    with pytest.raises(PatternConfigError, match="already registered"):
        registry.register(pattern("health", "other"))
    registry.register(pattern("health", r"\bping\b", 1), replace=True)
    best = registry.best_match("ping")
    assert best is not None and best.name == "health"
    assert registry.best_match("check health") is None


def test_unregister_and_version_bumps() -> None:
    registry = PatternRegistry(LIBRARY)
    before = registry.version
    removed = registry.unregister("tool")
    assert removed.name == "tool"
    assert registry.version > before
    best = registry.best_match("run tool and check health")
    assert best is not None and best.name == "health"
    with pytest.raises(KeyError):
        registry.unregister("tool")


def test_captures_and_text_after_trigger() -> None:
    registry = PatternRegistry([pattern("tag", r"tagged\s+(with|as)\s+(?P<tag>\w+)", 1),
                                pattern("store", r"(store|remember)\s+", 1)])
    tag = registry.get("tag")
    store = registry.get("store")
    assert tag is not None and store is not None
    assert registry.captures(tag, "memories TAGGED with Security") == {"tag": "Security"}
    assert registry.captures(tag, "nothing here") == {}
    assert registry.text_after_trigger(store, "Remember the deploy key rotates") == \
        "the deploy key rotates"


def test_stats_count_patterns_and_match_cache() -> None:
    registry = PatternRegistry(LIBRARY)
    registry.best_match("check health")
    registry.best_match("check health")
    stats = registry.get_stats()
    assert stats["total_patterns"] == len(LIBRARY)
    assert stats["patterns_by_type"]["memory"] == 3
    assert stats["match_cache"]["hits"] >= 1


def _with_examples(name: str, kind: PatternType, examples: list[str],
                   negatives: list[str] | None = None) -> PatternDefinition:
    return PatternDefinition(name=name, pattern_type=kind, trigger_pattern=rf"\b{name}\b",
                             examples=examples, negative_examples=negatives or [])


def test_a_nearer_negative_example_keeps_its_pattern_out_of_stage_two() -> None:
    store = _with_examples("keep", PatternType.MEMORY, ["store the redis password"],
                           ["did we store the redis password"])
    recall = _with_examples("lookup", PatternType.MEMORY, ["did we decide anything on caching"])
    registry = PatternRegistry([store, recall], lexicon=RoutingLexicon())
    ranked = registry.stage_two("did we store the redis cluster password").candidates
    assert [c.pattern for c in ranked] == ["lookup"]
    # Without the negative, the shared words make "keep" the nearest.
    plain = PatternRegistry([msgspec.structs.replace(store, negative_examples=[]), recall],
                            lexicon=RoutingLexicon())
    assert plain.stage_two("did we store the redis cluster password").candidates[0].pattern \
        == "keep"
    # A query nearer to the positive example still goes there.
    assert registry.stage_two("store the redis password now").candidates[0].pattern == "keep"


def test_off_topic_examples_are_scored_apart_in_every_mode() -> None:
    lexicon = RoutingLexicon(off_topic=["tell me a joke about cats"])
    registry = PatternRegistry([_with_examples("health", PatternType.INFRASTRUCTURE,
                                               ["is the cat service healthy"])],
                               lexicon=lexicon)
    for kind in (None, PatternType.INFRASTRUCTURE):
        found = registry.stage_two("tell me a joke about dogs", kind)
        assert found.off_topic is not None
        assert found.off_topic.example == "tell me a joke about cats"
        assert all(c.pattern == "health" for c in found.candidates)
    assert registry.stage_two("tell me a joke", PatternType.MEMORY).candidates == []


def test_the_lexicon_meets_synonyms_in_stage_two() -> None:
    store = _with_examples("keep", PatternType.MEMORY, ["store this fact"])
    bare = PatternRegistry([store], lexicon=RoutingLexicon())
    assert bare.stage_two("jot down: backups at 2am").candidates == []
    knowing = PatternRegistry([store], lexicon=RoutingLexicon({"store": ["jot down"]}))
    assert knowing.stage_two("jot down: backups at 2am").candidates[0].pattern == "keep"


def test_negative_examples_are_validated_like_examples() -> None:
    with pytest.raises(PatternConfigError, match="negative_examples"):
        PatternDefinition.from_config({"name": "p", "pattern_type": "memory",
                                       "trigger_pattern": "x", "negative_examples": [1]})
