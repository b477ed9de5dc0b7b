from __future__ import annotations

from pathlib import Path

import pytest

from tmws.errors import PatternConfigError, PatternError
from tmws.models import PatternDefinition, PatternType
from tmws.patterns import default_library_path, load_pattern_file, parse_pattern_library
from tmws.registry import PatternRegistry

VALID = """
performance_targets:
  infrastructure: {p50: 10, p95: 20, p99: 30}
cache_config:
  memory: {ttl: 60, max_size: 10}
infrastructure_patterns:
  - name: health_check
    pattern_type: infrastructure
    trigger_pattern: '(check|test)\\s+health'
    cost_tokens: 30
    priority: 8
"""


def test_shipped_library_loads_with_documented_names() -> None:
    library = load_pattern_file(default_library_path())
    names = {p.name for p in library.patterns}
    documented = {"execute_mcp_tool", "system_command", "health_check", "quick_calculation",
                  "recall_memory", "store_memory", "search_by_tag", "filter_by_importance",
                  "semantic_search", "analyze_codebase", "compare_patterns",
                  "aggregate_insights", "temporal_analysis", "contextual_recommendation"}
    assert documented <= names
    store = next(p for p in library.patterns if p.name == "store_memory")
    assert store.cache_ttl == 0 and not store.cacheable
    assert library.performance_targets[PatternType.HYBRID].p95 == 200
    assert library.cache_config[PatternType.HYBRID].ttl == 600


def test_compose_config_is_the_shipped_library() -> None:
    # deploy/config/patterns.yaml is what docker compose mounts; it must not drift.
    deployed = Path(__file__).parent.parent / "deploy" / "config" / "patterns.yaml"
    assert deployed.read_text() == default_library_path().read_text()


@pytest.mark.parametrize(("query", "fires"), [
    ("store this optimization pattern", True),
    ("please remember that redis needs more memory", True),
    ("  Record architecture decision", True),
    # A question or a noun is not a write; nor is a word that merely contains the verb.
    ("what do we remember about the login outage", False),
    ("is the vector store responding", False),
    ("restore the backup", False),
])
def test_store_memory_fires_only_on_an_imperative(query: str, fires: bool) -> None:
    registry = PatternRegistry(load_pattern_file(default_library_path()).patterns)
    assert ("store_memory" in [p.name for p in registry.all_matches(query)]) is fires


def test_triggers_start_at_a_word_boundary() -> None:
    registry = PatternRegistry(load_pattern_file(default_library_path()).patterns)
    assert [p.name for p in registry.all_matches("test connection")] == ["health_check"]
    assert registry.all_matches("retest connection") == []
    assert registry.all_matches("untag as urgent") == []


def test_valid_file_overrides_only_what_it_names() -> None:
    library = parse_pattern_library(VALID, source="inline.yaml")
    assert [p.name for p in library.patterns] == ["health_check"]
    assert library.performance_targets[PatternType.INFRASTRUCTURE].p95 == 20
    assert library.performance_targets[PatternType.MEMORY].p95 == 100  # default kept
    assert library.cache_config[PatternType.MEMORY].max_size == 10
    assert PatternType.HYBRID not in library.cache_config  # TMWS_CACHE_TTL/_MAX_SIZE apply


@pytest.mark.parametrize(("text", "fragments"), [
    ("infrastructure_patterns: [\n  - name: x\n    pattern_type: [", ["bad.yaml", "invalid YAML",
                                                                      "line"]),
    ("infrastructure_patterns:\n  - name: x\n    pattern_type: quantum\n"
     "    trigger_pattern: 'a'\n", ["bad.yaml", "'x'", "pattern_type must be one of"]),
    ("p_patterns:\n  - {name: x, pattern_type: memory, trigger_pattern: 'a'}\n"
     "  - {name: x, pattern_type: memory, trigger_pattern: 'b'}\n", ["'x'", "duplicate"]),
    ("p_patterns:\n  - {name: y, pattern_type: memory, trigger_pattern: '(?<=a)b'}\n",
     ["'y'", "trigger_pattern rejected", "look-around"]),
    ("p_patterns:\n  - {name: z, pattern_type: memory, trigger_pattern: '(a)\\1'}\n",
     ["'z'", "trigger_pattern rejected", "backreference"]),
    ("p_patterns:\n  - {name: w, pattern_type: memory, trigger_pattern: '(unclosed'}\n",
     ["'w'", "trigger_pattern rejected"]),
    ("p_patterns:\n  - {name: v, pattern_type: memory}\n", ["'v'", "missing required field "
                                                            "'trigger_pattern'"]),
    ("p_patterns:\n  - {name: u, pattern_type: memory, trigger_pattern: a, colour: red}\n",
     ["'u'", "unknown field(s) colour"]),
    ("p_patterns:\n  - {name: t, pattern_type: memory, trigger_pattern: a, priority: high}\n",
     ["'t'", "priority"]),
    ("surprise: 1\n", ["unknown top-level key 'surprise'"]),
    ("cache_config:\n  warp: {ttl: 1}\n", ["unknown pattern type 'warp'"]),
    ("- just\n- a list\n", ["top level must be a mapping"]),
])
def test_bad_files_name_file_pattern_and_problem(text: str, fragments: list[str]) -> None:
    with pytest.raises(PatternError) as caught:
        parse_pattern_library(text, source="bad.yaml")
    message = str(caught.value)
    assert "bad.yaml" in message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PatternConfigError, match=r"nope\.yaml.*cannot read"):
        load_pattern_file(missing)


def test_from_config_builds_a_pattern() -> None:
    pattern = PatternDefinition.from_config({
        "name": "n", "pattern_type": "hybrid", "trigger_pattern": "x", "priority": 3,
        "cost_tokens": 9, "metadata": {"example_queries": ["x y"]}})
    assert pattern.pattern_type is PatternType.HYBRID
    assert pattern.example_queries == ["x y"]
    assert pattern.cache_ttl is None and pattern.cacheable
