"""Python-level tests of the native lexical example index (``tmws._native.ExampleIndex``).

``ReferenceIndex`` below is a plain-Python implementation of the same TF-IDF scoring (from
the description in ``tmws/_tmws_core.pyi``); the native index must agree with it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

import tmws._native
from tmws._native import ExampleIndex

Example = tuple[str, str, str]
Feature = tuple[str, str]
"""``(namespace, text)``: ``w`` word, ``b`` bigram, ``c`` character n-gram."""
Vector = dict[Feature, float]


def words(text: str) -> list[str]:
    """Maximal runs of alphanumeric characters, lowercased one character at a time."""
    found: list[str] = []
    current: list[str] = []
    for char in text:
        if char.isalnum():
            current.append(char.lower().replace("\u03c2", "\u03c3"))  # final sigma -> sigma
        elif current:
            found.append("".join(current))
            current = []
    if current:
        found.append("".join(current))
    return found


def features(text: str) -> tuple[Counter[Feature], Counter[Feature]]:
    """Term counts of the word block (words, bigrams) and the char block (n-grams)."""
    word_block: Counter[Feature] = Counter()
    char_block: Counter[Feature] = Counter()
    tokens = words(text)
    for i, word in enumerate(tokens):
        word_block["w", word] += 1
        if i:
            word_block["b", f"{tokens[i - 1]} {word}"] += 1
        padded = f"<{word}>"
        for n in range(3, 6):
            for start in range(len(padded) - n + 1):
                char_block["c", padded[start : start + n]] += 1
    return word_block, char_block


def normalised(vector: Vector) -> Vector:
    norm = math.sqrt(sum(w * w for w in vector.values()))
    return {f: w / norm for f, w in vector.items()} if norm else {}


class ReferenceIndex:
    """TF-IDF (sublinear tf, smoothed idf), two L2-normalised blocks, 0.5/0.5 cosine."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)
        counts = [features(text) for _, _, text in self.examples]
        df: Counter[Feature] = Counter()
        for blocks in counts:
            for block in blocks:
                df.update(block.keys())
        n = len(self.examples)
        self.idf = {f: math.log((1 + n) / (1 + d)) + 1 for f, d in df.items()}
        self.vectors = [[self.weigh(block) for block in blocks] for blocks in counts]
        self.order = list(dict.fromkeys(name for name, _, _ in self.examples))

    def weigh(self, block: Counter[Feature]) -> Vector:
        return normalised(
            {f: (1 + math.log(tf)) * self.idf[f] for f, tf in block.items() if f in self.idf}
        )

    def score(
        self, query: str, top_k: int = 5, kind: str | None = None
    ) -> list[tuple[str, float, int]]:
        q = [self.weigh(block) for block in features(query)]
        best: dict[str, tuple[float, int]] = {}
        for i, (name, example_kind, _) in enumerate(self.examples):
            if kind is not None and example_kind != kind:
                continue
            score = sum(
                0.5 * sum(w * vector.get(f, 0.0) for f, w in qb.items())
                for qb, vector in zip(q, self.vectors[i], strict=True)
            )
            if score > 0 and (name not in best or score > best[name][0]):
                best[name] = (score, i)
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], self.order.index(item[0])))
        return [(name, score, i) for name, (score, i) in ranked[:top_k]]


LIBRARY: list[Example] = [
    ("rotate_keys", "ops", "rotate the JWT signing keys"),
    ("vacuum", "db", "tune the postgres vacuum settings"),
    ("rotate_keys", "ops", "please rotate my API keys"),
    ("backup", "db", "back up the database nightly"),
    ("deploy", "ops", "deploy the service to kubernetes"),
    ("optimize", "db", "query optimization tips"),
    ("weather", "chat", "what is the weather like today in München?"),
    ("backup", "db", "restore yesterday's backup"),
    ("greek", "chat", "ΟΔΟΣ και δρόμος"),
]


@pytest.fixture(scope="module")
def index() -> ExampleIndex:
    return ExampleIndex(LIBRARY)


def test_exported() -> None:
    assert "ExampleIndex" in tmws._native.__all__


def test_sizes(index: ExampleIndex) -> None:
    assert len(index) == len(LIBRARY)
    assert index.pattern_count == 7
    assert index.feature_count > 0
    stats = index.stats()
    assert stats["patterns"] == 7
    assert stats["examples"] == len(LIBRARY)
    assert stats["kinds"] == 3
    assert stats["word_features"] + stats["char_features"] == index.feature_count
    assert stats["postings"] >= index.feature_count
    assert stats["empty_examples"] == 0
    assert repr(index) == (
        f"<ExampleIndex patterns=7 examples={len(LIBRARY)} features={index.feature_count}>"
    )
    empty = ExampleIndex([])
    assert len(empty) == 0
    assert empty.feature_count == 0
    assert empty.score("rotate the keys") == []


def test_identical_text_scores_one(index: ExampleIndex) -> None:
    found = index.score("please rotate my API keys")
    name, score, example = found[0]
    assert (name, example) == ("rotate_keys", 2)
    assert score == pytest.approx(1.0, abs=1e-6)
    assert score <= 1.0
    # Same features up to case and punctuation.
    assert index.score("PLEASE, rotate my api-keys!") == found
    assert [type(v) for v in found[0]] == [str, float, int]
    assert len({name for name, _, _ in found}) == len(found)
    assert all(0.0 < s <= 1.0 for _, s, _ in found)
    assert [s for _, s, _ in found] == sorted((s for _, s, _ in found), reverse=True)


@pytest.mark.parametrize("query", ["", "   \n", "!!! ... ?", "«»—", "xyzzy qwv"])
def test_no_known_features_scores_nothing(index: ExampleIndex, query: str) -> None:
    assert index.score(query) == []


def test_lexical_not_semantic(index: ExampleIndex) -> None:
    # A morphological variant shares n-grams only; a synonym shares nothing.
    assert index.score("optimize")[0][0] == "optimize"
    assert index.score("automobile") == []


def test_kind_filter(index: ExampleIndex) -> None:
    everything = index.score("the", top_k=10)
    assert {name for name, _, _ in everything} == {
        "rotate_keys",
        "vacuum",
        "backup",
        "deploy",
        "weather",
    }
    ops = index.score("the", top_k=10, kind="ops")
    assert {name for name, _, _ in ops} == {"rotate_keys", "deploy"}
    assert ops == [r for r in everything if r[0] in {"rotate_keys", "deploy"}]
    assert index.score("the", kind="nope") == []


def test_top_k(index: ExampleIndex) -> None:
    everything = index.score("the", top_k=100)
    assert len(everything) == 5
    assert index.score("the") == everything[:5]
    for k in range(7):
        assert index.score("the", top_k=k) == everything[:k]
    with pytest.raises(ValueError, match="top_k"):
        index.score("the", top_k=-1)


def test_ties_by_registration_order() -> None:
    index = ExampleIndex(
        [
            ("c", "k", "reset password"),
            ("a", "k", "reset my password"),
            ("b", "k", "Reset password!"),
            ("c", "k", "reset password"),
        ]
    )
    found = index.score("reset password")
    assert [(name, example) for name, _, example in found] == [("c", 0), ("b", 2), ("a", 1)]
    assert found[0][1] == found[1][1]


def test_idf_down_weights_common_words() -> None:
    index = ExampleIndex([("a", "k", "the cat"), ("b", "k", "the dog"), ("c", "k", "the owl")])
    common = index.score("the")
    assert [name for name, _, _ in common] == ["a", "b", "c"]
    assert index.score("cat")[0][1] > common[0][1]


def test_rejects_bad_input(index: ExampleIndex) -> None:
    with pytest.raises(TypeError):
        ExampleIndex("not a list of tuples")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="length 3"):
        ExampleIndex([("p", "k")])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        ExampleIndex([["p", "k", "text"]])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        ExampleIndex([("p", "k", 3)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        index.score(None)  # type: ignore[arg-type]


def test_frozen(index: ExampleIndex) -> None:
    with pytest.raises(AttributeError):
        index.feature_count = 3  # type: ignore[misc]


def test_threads_agree(index: ExampleIndex) -> None:
    queries = [f"rotate the keys of service {i} nightly" for i in range(100)]
    expected = [index.score(q) for q in queries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: [index.score(q) for q in queries], range(8)))
    assert all(r == expected for r in results)


REFERENCE_QUERIES = [
    "rotate the JWT signing keys",
    "how do I rotate keys",
    "postgres settings",
    "nightly database backup please",
    "optimize my slow query",
    "deploy kubernetes kubernetes kubernetes",
    "weather in munchen today",
    "Οδός",
    "the the the",
    "restore",
]


@pytest.mark.parametrize("query", REFERENCE_QUERIES)
@pytest.mark.parametrize("kind", [None, "db"])
def test_matches_reference(index: ExampleIndex, query: str, kind: str | None) -> None:
    reference = ReferenceIndex(LIBRARY).score(query, top_k=100, kind=kind)
    native = index.score(query, top_k=100, kind=kind)
    if kind is None:
        assert reference, "every reference query shares something with the library"
    assert [(name, example) for name, _, example in native] == [
        (name, example) for name, _, example in reference
    ]
    for (_, got, _), (_, want, _) in zip(native, reference, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
