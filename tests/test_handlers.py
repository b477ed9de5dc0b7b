"""Handler arguments read from the query when the trigger's named groups give none."""

from __future__ import annotations

import pytest

from tmws.handlers import subjects_in, tag_in


@pytest.mark.parametrize(("query", "tag"), [
    ("find memories tagged with security", "security"),
    ("search tag performance", "performance"),
    ("get all memories tagged critical", "critical"),
    ("memories with the security tag", "security"),
    ("filter memories by tag auth", "auth"),
    ("which memories have the tag deploy", "deploy"),
    ("show me #incident-42 notes", "incident-42"),
    ("anything tagged as postgres?", "postgres"),
])
def test_tag_in(query: str, tag: str) -> None:
    assert tag_in(query) == tag


@pytest.mark.parametrize("query", ["recall memories about auth", "tag the", "with the tag"])
def test_no_tag(query: str) -> None:
    assert tag_in(query) is None


@pytest.mark.parametrize(("query", "left", "right"), [
    ("compare current implementation with previous", "current implementation", "previous"),
    ("compare security approach to best practices", "security approach", "best practices"),
    ("compare performance with benchmarks", "performance", "benchmarks"),
    ("redis vs memcached: which is better", "redis", "memcached"),
    ("postgres versus mysql, for us?", "postgres", "mysql"),
    ("difference between the old auth flow and the new implementation",
     "the old auth flow", "the new implementation"),
    ("how does the new implementation compare to the previous one?",
     "the new implementation", "the previous one"),
    ("quick question: compare v1 against v2", "v1", "v2"),
])
def test_subjects_in(query: str, left: str, right: str) -> None:
    assert subjects_in(query) == (left, right)


@pytest.mark.parametrize("query", ["compare", "compare the two", "what changed yesterday"])
def test_no_subjects(query: str) -> None:
    assert subjects_in(query) is None
