"""Recall relevance on the hand-written retrieval set: the ranking is not worse than the one
it replaced (bench/legacy_recall.py), and never returns another namespace's private rows.

Figures at 100,000 memories: bench/retrieval_quality.py and bench/README.md.
"""

from __future__ import annotations

import statistics

from bench.legacy_recall import legacy_search
from bench.retrieval_set import FACTS, NEAR_MISSES, PARTIAL, QUESTIONS, ndcg_at, recall_at
from tmws.memory import MemoryStore

# Unrelated memories around the facts: the same words in other combinations.
NOISE = [f"{a} {b} notes for the {c} review"
          for a in ("database", "backup", "token", "deploy", "cache", "queue", "office")
          for b in ("latency", "owner", "budget", "migration", "alert")
          for c in ("weekly", "quarterly", "annual")]


async def assert_not_worse_than_legacy(store: MemoryStore, namespace: str) -> float:
    """Stores the hand-written set (and its private copy in another namespace), ranks every
    question with ``store.search`` and with the legacy ranking, and asserts the first is not
    worse on recall@10 or nDCG@10 and never returns the copy. Returns its recall@10."""
    keys = {await store.store(namespace, text): key
            for key, text in {**FACTS, **NEAR_MISSES}.items()}
    for text in NOISE:
        await store.store(namespace, text)
    other = namespace + "-other"
    foreign = {await store.store(other, text) for text in FACTS.values()}

    scores: dict[str, tuple[list[float], list[float]]] = {"new": ([], []), "old": ([], [])}
    for question, answers in QUESTIONS.items():
        gains = {key: 2.0 for key in answers} | {key: 1.0 for key in PARTIAL.get(question, ())}
        new = [r.id for r in await store.search(namespace, question)]
        old = await legacy_search(store.database, store.provider, namespace, question,
                                  min_similarity=store.min_similarity)
        assert not foreign & set(new), question
        for name, ids in (("new", new), ("old", old)):
            ranked = [keys.get(i, str(i)) for i in ids]
            scores[name][0].append(recall_at(ranked, answers))
            scores[name][1].append(ndcg_at(ranked, gains))

    new_recall, new_ndcg = (statistics.fmean(v) for v in scores["new"])
    old_recall, old_ndcg = (statistics.fmean(v) for v in scores["old"])
    assert new_recall >= old_recall and new_ndcg >= old_ndcg - 1e-9, (
        f"recall@10 {new_recall:.3f} (was {old_recall:.3f}),"
        f" nDCG@10 {new_ndcg:.3f} (was {old_ndcg:.3f})")
    return new_recall


async def test_new_ranking_is_not_worse_on_the_hand_written_set(
        store: MemoryStore, namespace: str) -> None:
    new_recall = await assert_not_worse_than_legacy(store, namespace)
    # Most questions find their fact at all (the old ranking's level on this set).
    assert new_recall >= 0.8, f"recall@10 {new_recall:.3f}"
