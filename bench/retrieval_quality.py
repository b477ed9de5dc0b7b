"""Recall relevance: recall@10 and nDCG@10 of ``MemoryStore.search`` and of the ranking
it replaced (``bench/legacy_recall.py``), on two labelled sets.

A private embedded PostgreSQL (or ``--database-url``) is loaded with
``bench/memory_load.py``'s generated memories, then the hand-written facts of
``bench/retrieval_set.py`` (and their near misses) are stored in one namespace through
``MemoryStore.store``, with a private copy of every fact in another namespace that no query
may return.

- topics: generated recall requests (a command phrase and 2-4 words of one topic, as the
  latency benchmark sends). Gain 2 for a readable memory of the query's topic holding every
  query word, 1 for one of its topic only; the relevant set of recall@10 is the gain-2
  memories, or the topic's when there are none (hits / min(10, relevant)).
- facts: the hand-written paraphrased questions; gain 2 for the answering fact, 1 for a
  near miss on the same subject.

    .venv/bin/python bench/retrieval_quality.py [--rows 100000] [--topic-queries 200] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from bench._postgres import add_database_option, postgres
from bench._smoke import parse_args
from bench.legacy_recall import legacy_search
from bench.memory_load import (
    DIM,
    QUERY_PREFIXES,
    STOPWORDS,
    TOPICS,
    Corpus,
    build_vector_index,
    load,
)
from bench.retrieval_set import FACTS, NEAR_MISSES, PARTIAL, QUESTIONS, ndcg_at, recall_at
from tmws._recall_index import DerivedRecallIndex
from tmws.config import Settings
from tmws.database import Database, upgrade
from tmws.embeddings import HashProvider
from tmws.memory import MemoryStore, topic_words

FACTS_NAMESPACE = "agent-1"
OTHER_NAMESPACE = "agent-2"

Ranker = Callable[[str, str], Awaitable[list[int]]]


def topic_queries(corpus: Corpus, n: int) -> list[tuple[str, str, int]]:
    """(namespace, text, topic): Corpus.query's shape, with the topic kept."""
    rng = random.Random(41)
    out = []
    for _ in range(n):
        topic = rng.randrange(TOPICS)
        words = rng.choices(corpus.topics[topic], cum_weights=corpus.topic_cum,
                            k=rng.randint(2, 4))
        if rng.random() < 0.3:
            words.append(rng.choices(corpus.background[len(STOPWORDS):], k=1)[0])
        text = f"{rng.choice(QUERY_PREFIXES)} {' '.join(dict.fromkeys(words))}".strip()
        out.append((rng.choice(("agent-1", "agent-2", "agent-3", "agent-4", "agent-5")),
                    text, topic))
    return out


async def topic_gains(database: Database, namespace: str, text: str, topic: int,
                      ids: Sequence[int]
                      ) -> tuple[dict[str, float], list[str], dict[str, float]]:
    """Gains of ``ids``, the relevant ids for recall@10, and an ideal top 10's gains."""
    words = " & ".join(topic_words(text))
    readable = "(namespace = %(ns)s OR visibility = 'shared')"
    params: dict[str, Any] = {"ns": namespace, "topic": topic, "q": words, "ids": list(ids)}
    full = await database.fetch(
        f"SELECT id FROM memories WHERE {readable} AND (metadata->>'topic')::int = %(topic)s"
        " AND content_tsv @@ to_tsquery('english', %(q)s) ORDER BY id LIMIT 10", params)
    topical = await database.fetch(
        f"SELECT count(*) AS n FROM memories WHERE {readable}"
        " AND (metadata->>'topic')::int = %(topic)s", params)
    of_ids = await database.fetch(
        "SELECT id, (metadata->>'topic')::int = %(topic)s AS same,"
        " content_tsv @@ to_tsquery('english', %(q)s) AS all_words"
        " FROM memories WHERE id = ANY(%(ids)s)", params)
    gains = {str(r["id"]): (2.0 if r["all_words"] else 1.0) if r["same"] else 0.0
             for r in of_ids}
    n_full, n_topic = len(full), int(topical[0]["n"])
    # The ideal ranking: every full match (at most 10 matter), then the topic's others.
    ideal = {f"ideal-{i}": 2.0 for i in range(min(10, n_full))}
    ideal |= {f"ideal-t{i}": 1.0 for i in range(min(10, n_topic - n_full))}
    # Without full matches, every memory of the topic is relevant (>= 10 of them): the
    # returned ones stand for them, padded so that recall@10 divides by 10.
    relevant = ([str(r["id"]) for r in full] if full else
                [k for k, g in gains.items() if g > 0] + [f"pad-{i}" for i in range(10)])
    return gains, relevant, ideal


def ndcg_graded(ranked: Sequence[str], gains: Mapping[str, float],
                ideal: Mapping[str, float]) -> float:
    """nDCG@10 of ``ranked`` with ``gains``, normalised by the ``ideal`` gains."""
    def dcg(values: Sequence[float]) -> float:
        return sum((math.pow(2.0, g) - 1) / math.log2(i + 2) for i, g in enumerate(values[:10]))

    top = dcg(sorted(ideal.values(), reverse=True))
    return 0.0 if top == 0 else dcg([gains.get(r, 0.0) for r in ranked]) / top


async def evaluate(rankers: Mapping[str, Ranker], database: Database, corpus: Corpus,
                   fact_ids: Mapping[str, int], other_ids: set[int], n_topic: int
                   ) -> dict[str, dict[str, float]]:
    by_id = {str(v): k for k, v in fact_ids.items()}
    out: dict[str, dict[str, float]] = {}
    for name, rank in rankers.items():
        fact_recall, fact_ndcg, leaks = [], [], 0
        for question, answers in QUESTIONS.items():
            ids = await rank(FACTS_NAMESPACE, question)
            leaks += sum(1 for i in ids if i in other_ids)
            ranked = [by_id.get(str(i), str(i)) for i in ids]
            gains = {key: 2.0 for key in answers} | {
                key: 1.0 for key in PARTIAL.get(question, ())}
            fact_recall.append(recall_at(ranked, answers))
            fact_ndcg.append(ndcg_at(ranked, gains))
        topic_recall, topic_ndcg = [], []
        for namespace, text, topic in topic_queries(corpus, n_topic):
            ids = await rank(namespace, text)
            gains, relevant, ideal = await topic_gains(database, namespace, text, topic, ids)
            ranked = [str(i) for i in ids]
            topic_recall.append(recall_at(ranked, relevant))
            topic_ndcg.append(ndcg_graded(ranked, gains, ideal))
        out[name] = {"facts recall@10": statistics.fmean(fact_recall),
                     "facts nDCG@10": statistics.fmean(fact_ndcg),
                     "topics recall@10": statistics.fmean(topic_recall),
                     "topics nDCG@10": statistics.fmean(topic_ndcg),
                     "other namespace rows returned": float(leaks)}
    return out


async def main_async(args: argparse.Namespace) -> None:
    begun = time.perf_counter()
    corpus = Corpus()
    settings = Settings.from_env({"TMWS_VECTOR_INDEX": args.index})
    with tempfile.TemporaryDirectory(prefix="tmws-quality-") as tmp, \
            postgres(args.database_url, tmp) as conninfo:
        await upgrade(conninfo, settings)
        load(conninfo, corpus, args.rows)
        build_vector_index(conninfo, settings)
        database = Database(conninfo, settings)
        await database.open()
        provider = HashProvider(DIM)
        store = MemoryStore(database, provider,
                            min_similarity=settings.recall_min_similarity)
        # The derived index (TMWS_RECALL_INDEX=memory) over the same rows.
        recall_index = DerivedRecallIndex(database, DIM)
        derived = MemoryStore(database, provider, min_similarity=settings.recall_min_similarity,
                              recall_index=recall_index)
        try:
            fact_ids = {key: await store.store(FACTS_NAMESPACE, text)
                        for key, text in {**FACTS, **NEAR_MISSES}.items()}
            other_ids = {await store.store(OTHER_NAMESPACE, text) for text in FACTS.values()}
            await database.fetch("ANALYZE memories")
            recall_index.start()
            if not await recall_index.wait_ready(3600):
                raise RuntimeError("the derived recall index did not load")

            async def current(namespace: str, text: str) -> list[int]:
                return [r.id for r in await store.search(namespace, text)]

            async def before(namespace: str, text: str) -> list[int]:
                return await legacy_search(database, provider, namespace, text,
                                           min_similarity=store.min_similarity)

            async def in_process(namespace: str, text: str) -> list[int]:
                return [r.id for r in await derived.search(namespace, text)]

            results = await evaluate({"before (legacy_recall.py)": before,
                                      "MemoryStore.search": current,
                                      "derived index (memory)": in_process},
                                     database, corpus, fact_ids, other_ids,
                                     args.topic_queries)
            if recall_index.stats()["fallbacks"]:
                raise RuntimeError(f"the derived index fell back: {recall_index.stats()}")
        finally:
            await recall_index.close()
            await database.close()
    metrics = list(next(iter(results.values())))
    print(f"{args.rows:,} generated memories + {len(FACTS)} facts, {len(NEAR_MISSES)} near"
          f" misses; {len(QUESTIONS)} fact questions, {args.topic_queries} topic queries;"
          f" {args.index}")
    print(f"  {'ranking':<28}" + "".join(f" {m:>18}" for m in metrics))
    for name, values in results.items():
        print(f"  {name:<28}" + "".join(f" {values[m]:>18.3f}" for m in metrics))
    print(f"total {time.perf_counter() - begun:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--topic-queries", type=int, default=200)
    parser.add_argument("--index", choices=("ivfflat", "hnsw"), default="ivfflat")
    add_database_option(parser)
    asyncio.run(main_async(parse_args(parser, rows=300, topic_queries=4)))


if __name__ == "__main__":
    main()
