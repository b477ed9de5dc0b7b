"""Routing latency per query: stage 1 (trigger regexes) and stage 2 (example utterances),
on the default library and on the 1,000-pattern corpus with 5 examples per pattern.

    .venv/bin/python bench/routing_load.py [--corpus 1000] [--rounds 3] [--smoke]

Stage 1 is ``router.match`` (the Rust matcher, its result cache disabled so every query
is matched). Stage 2 is the full ``router.explain`` of a query no trigger matches: the
TF-IDF example scoring plus the decision and its explanation, i.e. what such a query
costs beyond stage 1. "Stage 2 + model" is the same with the examples' WordLlama vectors
attached and the query's vector given (the blended score: one 256-float dot product per
example); the query's own embedding is measured apart, in process and through the
OpenAI-compatible provider over loopback HTTP. Medians and p99 over every query, in
microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._reference import SIZES, load
from bench._smoke import parse_args
from tests.embedding_server import WORDLLAMA_DIM, embed
from tests.loopback import base_url, free_port
from tmws.embeddings import OpenAIProvider
from tmws.models import ExecutionMode, PatternDefinition, PatternType
from tmws.patterns import default_library_path, load_pattern_file
from tmws.registry import PatternRegistry
from tmws.router import HybridRouter

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_PER_PATTERN = 5


def _timed(call: Callable[[str], object], queries: Sequence[str]) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter_ns
    for query in queries:
        start = clock()
        call(query)
        samples.append((clock() - start) / 1000)
    return samples


def _summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered):7.2f} us   p99 {p99:8.2f} us"


def _measure(label: str, patterns: Sequence[PatternDefinition], queries: Sequence[str],
             rounds: int) -> None:
    mode = ExecutionMode.BALANCED
    # The matcher's result cache off: every query is matched, not looked up.
    lexical = HybridRouter(PatternRegistry(patterns, match_cache_size=0))
    with_model = PatternRegistry(patterns, match_cache_size=0)
    with_model.attach_vectors(embed("wordllama", with_model.example_texts(), WORDLLAMA_DIM), 0.5)
    blended_router = HybridRouter(with_model)
    unmatched = [q for q in queries if lexical.match(q, mode) is None]
    vectors = dict(zip(unmatched, embed("wordllama", unmatched, WORDLLAMA_DIM), strict=True))
    stage1: list[float] = []
    stage2: list[float] = []
    blended: list[float] = []
    for _ in range(rounds):
        stage1 += _timed(lambda q: lexical.match(q, mode), queries)
        # min_score given: past the router's decision memo, so every query is scored.
        stage2 += _timed(lambda q: lexical.explain(q, mode, None, record=False,
                                                   min_score=lexical.min_score), unmatched)
        blended += _timed(lambda q: blended_router.explain(q, mode, None, record=False,
                                                           min_score=blended_router.min_score,
                                                           query_vector=vectors[q]), unmatched)
    print(f"{label}: {len(lexical.registry)} patterns, {lexical.registry.example_count} "
          f"examples, {len(queries)} queries ({len(unmatched)} reach stage 2)")
    print(f"  stage 1 (trigger)          {_summary(stage1)}")
    print(f"  stage 2 (examples)         {_summary(stage2)}")
    print(f"  stage 2 + model (blended)  {_summary(blended)}")


def _measure_query_embedding(queries: Sequence[str]) -> None:
    """What the model adds per stage-2 query before scoring (no query-vector cache)."""
    in_process = _timed(lambda q: embed("wordllama", [q], WORDLLAMA_DIM), queries)

    async def over_http(url: str) -> list[float]:
        provider = OpenAIProvider(url, "wordllama", WORDLLAMA_DIM)
        samples: list[float] = []
        try:
            for query in queries:
                start = time.perf_counter_ns()
                await provider.embed([query])
                samples.append((time.perf_counter_ns() - start) / 1000)
        finally:
            await provider.aclose()
        return samples

    # The server in a process of its own, as a real one would be (not sharing our GIL).
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.embedding_server", "--port",
                               str(port)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "serving ..." once the model is loaded
        http = asyncio.run(over_http(base_url(port)))
    finally:
        server.terminate()
        server.wait()
    print("query embedding (WordLlama l2_supercat, 256 dimensions):")
    print(f"  in process                 {_summary(in_process)}")
    print(f"  OpenAI-compatible, loopback {_summary(http)}")


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per embedding request
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--corpus", type=int, choices=SIZES, default=1000,
                        help="the corpus of the second measurement")
    parser.add_argument("--queries", type=int, default=None,
                        help="at most this many queries per measurement (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parse_args(parser, corpus=15, queries=40, rounds=1)
    library = load_pattern_file(default_library_path())
    default_queries = [q for p in library.patterns for q in p.routing_examples]
    paraphrases = ROOT / "tests" / "data" / "paraphrases.tsv"
    default_queries += [line.split("\t", 1)[1] for line in paraphrases.read_text().splitlines()
                        if "\t" in line and not line.startswith("#")]
    default_queries = default_queries[:args.queries]
    _measure("default library", library.patterns, default_queries, args.rounds)
    _measure_query_embedding(default_queries)

    corpus = load(args.corpus)
    # Each pattern's examples: the first queries the corpus expects it to win, topped up
    # to five with corpus queries no pattern matches (same vocabulary, deterministic).
    examples: dict[int, list[str]] = defaultdict(list)
    for query, expected in zip(corpus.queries, corpus.expected, strict=True):
        if expected is not None and len(examples[int(expected[1:])]) < EXAMPLES_PER_PATTERN:
            examples[int(expected[1:])].append(query)
    from_corpus = sum(1 for i in range(len(corpus.regexes))
                      if len(examples[i]) == EXAMPLES_PER_PATTERN)
    filler = random.Random(1).sample(
        [q for q, e in zip(corpus.queries, corpus.expected, strict=True) if e is None],
        EXAMPLES_PER_PATTERN * len(corpus.regexes))
    for i in range(len(corpus.regexes)):
        while len(examples[i]) < EXAMPLES_PER_PATTERN:
            examples[i].append(filler.pop())
    kinds = list(PatternType)
    patterns = [PatternDefinition(
        name=f"p{i}", pattern_type=kinds[i % 3], trigger_pattern=regex, priority=priority,
        examples=examples[i])
        for i, (regex, priority) in enumerate(zip(corpus.regexes, corpus.priorities,
                                                   strict=True))]
    print(f"(corpus N={args.corpus}: {from_corpus} patterns have 5 matching corpus queries as "
          "examples; the others are topped up with unmatched corpus queries)")
    # Some measured queries are also filler examples and find themselves: same cost.
    _measure(f"corpus N={args.corpus} x 5 examples", patterns, corpus.queries[:args.queries],
             args.rounds)


if __name__ == "__main__":
    main()
