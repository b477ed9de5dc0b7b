"""The native RecallIndex against a small Python reference of the same ranking (BM25 over
all words else any, exact cosine neighbours, reciprocal rank fusion), on generated
memories; and its input checks.

The reference is the specification in tmws/_tmws_core.pyi written out plainly; the native
index searched exactly (``exact_below`` above the partition sizes) must give the same ids
in the same order. With HNSW graphs (small ``exact_below``) the vector list may differ
slightly, so there only the readable set and recall are checked.
"""

from __future__ import annotations

import math
import random
import struct
from collections import Counter
from dataclasses import dataclass
from typing import TypedDict

import pytest

from tmws._native import RecallIndex

DIM = 16
WORDS = [f"w{i}" for i in range(40)]
NAMESPACES = ["a", "b", "c"]


@dataclass
class Memory:
    id: int
    namespace: str
    shared: bool
    importance: float
    created_us: int
    words: list[str]
    vector: list[float] | None

    def row(self) -> tuple[int, str, bool, float, int, str, bytes | None]:
        counts = Counter(self.words)
        # Positions as PostgreSQL prints them; the scope tags carry no positions.
        position = iter(range(1, 10_000))
        tsv = " ".join(f"'{w}':" + ",".join(str(next(position)) for _ in range(n))
                       for w, n in sorted(counts.items()))
        tsv += f" 'ns {self.namespace}' 'vis {'shared' if self.shared else 'private'}'"
        vector = None if self.vector is None else (
            struct.pack(">hh", DIM, 0) + struct.pack(f">{DIM}f", *self.vector))
        return (self.id, self.namespace, self.shared, self.importance, self.created_us,
                tsv, vector)


class Options(TypedDict):
    candidates: int
    limit: int
    max_distance: float
    rrf_k: float


def unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def generate(seed: int, n: int) -> list[Memory]:
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        words = rng.choices(WORDS[: rng.choice((10, 40))], k=rng.randint(1, 8))
        vector = None if rng.random() < 0.1 else [
            float(struct.unpack(">f", struct.pack(">f", rng.gauss(0, 1)))[0]) for _ in range(DIM)]
        out.append(Memory(i, rng.choice(NAMESPACES), rng.random() < 0.2,
                          round(rng.random(), 2), rng.randint(0, 5) * 1000, words, vector))
    return out


def reference(memories: list[Memory], namespace: str, lexemes: list[str],
              vector: list[float] | None, *, candidates: int, limit: int,
              max_distance: float, rrf_k: float) -> list[int]:
    """The ranking as documented, computed the slow way."""
    live = len(memories)
    average = sum(len(m.words) for m in memories) / live
    readable = [m for m in memories if m.namespace == namespace or m.shared]
    terms = list(dict.fromkeys(lexemes))
    known = [t for t in terms if any(t in m.words for m in memories)]

    def bm25(m: Memory, wanted: list[str]) -> float:
        score = 0.0
        for t in wanted:
            tf = m.words.count(t)
            if not tf:
                continue
            df = sum(1 for x in memories if t in x.words)
            idf = math.log(1 + (live - df + 0.5) / (df + 0.5))
            norm = 1.2 * (1 - 0.75 + 0.75 * len(m.words) / average)
            score += idf * tf * 2.2 / (tf + norm)
        return score

    text: list[Memory] = []
    if known:
        if len(known) == len(terms):
            text = [m for m in readable if all(t in m.words for t in known)]
        if not text:
            text = [m for m in readable if any(t in m.words for t in known)]
    text.sort(key=lambda m: (-bm25(m, known), -m.id))
    fused: dict[int, float] = {}
    for rank, m in enumerate(text[:candidates], 1):
        fused[m.id] = fused.get(m.id, 0.0) + 1 / (rrf_k + rank)
    if vector is not None:
        q = unit(vector)
        near = sorted(((1 - sum(a * b for a, b in zip(unit(m.vector), q, strict=True)), m)
                       for m in readable if m.vector is not None),
                      key=lambda dm: (dm[0], -dm[1].id))
        for rank, (distance, m) in enumerate(near[:candidates], 1):
            if distance <= max_distance:
                fused[m.id] = fused.get(m.id, 0.0) + 1 / (rrf_k + rank)
    by_id = {m.id: m for m in memories}
    order = sorted(fused, key=lambda i: (-fused[i], -by_id[i].importance,
                                         -by_id[i].created_us, -i))
    return order[:limit]


def build(memories: list[Memory], exact_below: int) -> RecallIndex:
    index = RecallIndex(DIM, exact_below=exact_below)
    index.apply([m.row() for m in memories], [])
    return index


def query_tsv(words: list[str]) -> str:
    return " ".join(f"'{w}':{i}" for i, w in enumerate(words, 1))


@pytest.mark.parametrize("seed", range(6))
def test_exact_ranking_equals_the_reference(seed: int) -> None:
    memories = generate(seed, 300)
    index = build(memories, exact_below=10_000)
    rng = random.Random(seed + 100)
    for _ in range(40):
        namespace = rng.choice([*NAMESPACES, "nobody"])
        words = rng.sample(WORDS, rng.randint(0, 3)) + (["unknownword"] if rng.random() < 0.2
                                                        else [])
        vector = None if rng.random() < 0.3 else [rng.gauss(0, 1) for _ in range(DIM)]
        options = Options(candidates=rng.choice((5, 20, 50)), limit=rng.choice((3, 10)),
                          max_distance=rng.choice((0.6, 0.9, 2.0)), rrf_k=60.0)
        got = [i for i, _ in index.search(namespace, query_tsv(words), vector, **options)]
        assert got == reference(memories, namespace, words, vector, **options), (
            namespace, words, options)


def test_changes_equal_a_fresh_build() -> None:
    """Upserts (moving memories between namespaces and visibility), deletions and
    re-insertions leave the same ranking as building from the final set."""
    memories = generate(11, 400)
    index = build(memories, exact_below=10_000)
    rng = random.Random(12)
    current = {m.id: m for m in memories}
    for round_ in range(5):
        changed = [Memory(m.id, rng.choice(NAMESPACES), rng.random() < 0.5, m.importance,
                          m.created_us, rng.choices(WORDS, k=3), m.vector)
                   for m in rng.sample(list(current.values()), 60)]
        deleted = rng.sample(sorted(current), 80)
        index.apply([m.row() for m in changed], deleted)
        current.update({m.id: m for m in changed})
        for i in deleted:
            current.pop(i, None)
        fresh = build(list(current.values()), exact_below=10_000)
        assert len(index) == len(current) == len(fresh)
        for words in (["w1"], ["w2", "w3"], ["w5", "w39"]):
            vector = [rng.gauss(0, 1) for _ in range(DIM)]
            for namespace in NAMESPACES:
                options = Options(candidates=50, limit=10, max_distance=2.0, rrf_k=60.0)
                assert index.search(namespace, query_tsv(words), vector, **options) == \
                    fresh.search(namespace, query_tsv(words), vector, **options), round_


def test_graphs_never_cross_namespaces() -> None:
    memories = generate(21, 3000)
    index = build(memories, exact_below=50)  # every partition searched through its graph
    assert index.stats()["graphs"] >= 3
    owner = {m.id: (m.namespace, m.shared) for m in memories}
    rng = random.Random(22)
    for _ in range(50):
        namespace = rng.choice(NAMESPACES)
        vector = [rng.gauss(0, 1) for _ in range(DIM)]
        found = index.search(namespace, query_tsv(rng.sample(WORDS, 2)), vector,
                             candidates=50, limit=50, max_distance=2.0, rrf_k=60.0)
        assert found
        for memory_id, _ in found:
            ns, shared = owner[memory_id]
            assert ns == namespace or shared


def test_bad_input_is_refused_and_changes_nothing() -> None:
    index = build(generate(1, 20), exact_below=100)
    before = len(index)
    good = generate(2, 1)[0].row()
    bad_tsv = (999, "a", False, 0.5, 0, "'open", None)
    with pytest.raises(ValueError, match="memory 999: content_tsv"):
        index.apply([good, bad_tsv], [])
    bad_vector = (998, "a", False, 0.5, 0, "'x':1", b"\x00\x03\x00\x00" + b"\x00" * 12)
    with pytest.raises(ValueError, match="memory 998: embedding"):
        index.apply([bad_vector], [1, 2])
    assert len(index) == before and 1 in index
    with pytest.raises(ValueError, match="3 dimensions"):
        index.search("a", "", [1.0, 2.0, 3.0], candidates=5, limit=5, max_distance=1.0,
                     rrf_k=60.0)
    with pytest.raises(ValueError, match="query_tsv"):
        index.search("a", "'open", None, candidates=5, limit=5, max_distance=1.0, rrf_k=60.0)
    with pytest.raises(ValueError, match="dim must be > 0"):
        RecallIndex(0)
    assert index.search("a", "", None, candidates=5, limit=5, max_distance=1.0,
                        rrf_k=60.0) == []
    zero = [0.0] * DIM  # a zero vector ranks nothing by distance (pgvector: NaN)
    assert index.search("a", "", zero, candidates=5, limit=5, max_distance=1.0,
                        rrf_k=60.0) == []
