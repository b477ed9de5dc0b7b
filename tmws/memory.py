"""The memory store: what agents save and recall, one namespace each.

Every statement is parameterised and scoped to a namespace. Each successful write bumps
the namespace's generation, which the result cache folds into its keys, so no read after
a write is answered from a pre-write entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
from pgvector import Vector as PgVector

from tmws._recall_index import DerivedRecallIndex
from tmws.cache import CacheManager
from tmws.database import Database
from tmws.embeddings import EmbeddingProvider, Vector
from tmws.inputs import (
    InputLimits,
    MemoryInput,
    check_metadata,
    check_namespace,
    convert,
)

__all__ = ["MemoryRecord", "MemoryStore", "topic_words"]

PREVIEW_CHARS: Final = 500

_WORD: Final = re.compile(r"[^\W_]+")
# Words that say what to do rather than what about: never search terms.
_COMMAND_WORDS: Final = frozenset(
    """a about all an and any are as at be by can do does for from get give has have how i in
    into is it its list me memories memory my of on or our please recall remember retrieve fetch
    show tell that the their them these this those to us was we were what when where which who
    why with you your store save record find search look like similar related history past
    recent latest historical items item important critical high priority tag tagged analyze
    investigate examine compare against summarize aggregate combine recommend suggest advise
    review notes note""".split()
)


def topic_words(text: str, limit: int = 12) -> list[str]:
    """The content words of a query, in order, without command words or duplicates."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in _COMMAND_WORDS and len(word) > 1:
            seen.setdefault(word, None)
    return list(seen)[:limit]


class MemoryRecord(msgspec.Struct, kw_only=True):
    """One memory as returned to callers (content truncated to a preview)."""

    id: int
    namespace: str
    content: str
    truncated: bool
    memory_type: str
    importance: float
    tags: list[str]
    visibility: str
    created_at: datetime
    score: float | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


_COLUMNS: Final = ("id, namespace, content, memory_type, importance, tags, metadata, visibility,"
                   " created_at")
# Readable by a namespace: its own memories and everyone's shared ones.
_READABLE: Final = "(namespace = %(ns)s OR visibility = 'shared')"
# Candidates each ranker contributes to reciprocal rank fusion, and its damping constant.
_RRF_CANDIDATES: Final = 50
_RRF_K: Final = 60
# Bounds on a full-text ranker, for queries of common words: the readable matches read
# (in the index's order; the rest are left out), and how many of those, first ranked by the
# cheap ts_rank, are ranked again by ts_rank_cd (cover density: ~20x the cost a row; 500
# keeps ts_rank_cd's order, ties included, on the bench's queries where 200 did not).
_FTS_SCAN: Final = 5000
_FTS_POOL: Final = 500


def _fts_ranked(which: str, condition: str = "true") -> str:
    """A full-text ranker over the stored ``content_tsv``: the index finds the matches
    tagged with the namespace or as shared (``scope``, migration 0005), the readable filter
    runs on their rows all the same (OFFSET 0 keeps the planner from intersecting the index
    with the ~30% of the table a namespace reads, which costs more than it saves), at most
    ``scan`` of them are read, the ``pool`` best by ts_rank are ranked by ts_rank_cd and the
    best ``cand`` kept."""
    return f"""
                SELECT id, row_number() OVER (ORDER BY ts_rank_cd(content_tsv, q) DESC,
                                                       id DESC) AS r
                FROM to_tsquery('english', %({which})s) q, LATERAL (
                    SELECT id, content_tsv FROM (
                        SELECT id, content_tsv FROM (
                            SELECT id, namespace, visibility, content_tsv FROM memories
                            WHERE %({which})s <> '' AND {condition}
                              AND content_tsv @@ (q && %(scope)s::tsquery)
                            OFFSET 0) matched
                        WHERE {_READABLE}
                        LIMIT %(scan)s) readable
                    ORDER BY ts_rank(content_tsv, q) DESC, id DESC
                    LIMIT %(pool)s) pooled
                ORDER BY r LIMIT %(cand)s"""


def _record(row: Mapping[str, Any], score: float | None = None, *,
            full: bool = False) -> MemoryRecord:
    content: str = row["content"]
    limit = len(content) if full else PREVIEW_CHARS
    return MemoryRecord(
        id=row["id"], namespace=row["namespace"], content=content[:limit],
        truncated=len(content) > limit, memory_type=row["memory_type"],
        importance=round(float(row["importance"]), 4), tags=list(row["tags"]),
        visibility=row["visibility"], created_at=row["created_at"],
        metadata=row["metadata"] or {}, score=None if score is None else round(float(score), 6),
    )


class MemoryStore:
    """Memory operations over one database, with embeddings from ``provider``."""

    def __init__(self, database: Database, provider: EmbeddingProvider, *,
                 min_similarity: float = 0.1, generations: CacheManager | None = None,
                 limits: InputLimits | None = None,
                 recall_index: DerivedRecallIndex | None = None) -> None:
        self.database = database
        # TMWS_RECALL_INDEX=memory: search() ranks in process when the index is ready.
        self.recall_index = recall_index
        self.provider = provider
        self.min_similarity = min_similarity
        self.limits = limits or InputLimits()
        # Every write bumps the generations the result cache keys on (locally, or in Redis
        # for every instance sharing it).
        self.generations = generations or CacheManager()

    async def _bump(self, namespace: str, visibility: str) -> None:
        await self.generations.bump(namespace, shared=visibility == "shared")

    async def _embed(self, text: str) -> Vector | None:
        vectors = await self.provider.embed([text])
        return vectors[0]

    async def store(self, namespace: str, content: str, *, memory_type: str = "general",
                    importance: float = 0.5, tags: Iterable[str] = (),
                    metadata: Mapping[str, Any] | None = None,
                    visibility: str = "private") -> int:
        """Store one memory; returns its id. InvalidRequestError (naming the field) for input
        the rules of :class:`tmws.inputs.MemoryInput` refuse."""
        memory = convert({"content": content, "memory_type": memory_type,
                          "importance": importance, "tags": list(tags),
                          "metadata": dict(metadata or {}), "visibility": visibility},
                         MemoryInput)
        return (await self.store_input(namespace, memory)).id

    async def store_input(self, namespace: str, memory: MemoryInput) -> MemoryRecord:
        """Store a checked :class:`~tmws.inputs.MemoryInput`; returns it as stored (whole
        content), in the same statement: nothing can fail after the row is committed.

        Everything is checked before the row is written, so an acknowledged memory can
        always be read back.
        """
        check_namespace(namespace)
        check_metadata(memory.metadata, self.limits)
        embedding = await self._embed(memory.content)
        rows = await self.database.fetch(
            "INSERT INTO memories (namespace, content, memory_type, importance, tags, metadata,"
            f" visibility, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (namespace, memory.content, memory.memory_type, memory.importance, memory.tags,
             msgspec.json.encode(memory.metadata).decode(), memory.visibility,
             None if embedding is None else _vector(embedding)),
        )
        # Before the cache generation moves: no read may fill the new generation from a
        # replica that has not replayed this write.
        await self.database.wrote(namespace, shared=memory.visibility == "shared")
        await self._bump(namespace, memory.visibility)
        return _record(rows[0], full=True)

    async def get(self, namespace: str, memory_id: int, *, full: bool = False
                  ) -> MemoryRecord | None:
        """One readable memory; ``full=True`` returns the whole content, not a preview."""
        rows = await self.database.read(
            namespace, f"SELECT {_COLUMNS} FROM memories WHERE {_READABLE} AND id = %(id)s",
            {"ns": namespace, "id": memory_id}, prepare=True)
        return _record(rows[0], full=full) if rows else None

    async def delete(self, namespace: str, memory_id: int) -> bool:
        """Only the owner deletes, shared or not."""
        rows = await self.database.fetch(
            "DELETE FROM memories WHERE namespace = %s AND id = %s RETURNING visibility",
            (namespace, memory_id))
        if rows:
            await self.database.wrote(namespace, shared=rows[0]["visibility"] == "shared")
            await self._bump(namespace, rows[0]["visibility"])
        return bool(rows)

    async def similar(self, namespace: str, text: str, *, limit: int = 10
                      ) -> list[MemoryRecord]:
        """Nearest neighbours by cosine similarity of embeddings (score = similarity)."""
        embedding = await self._embed(text)
        if embedding is None:
            return []
        rows = await self.database.read(
            namespace,
            f"SELECT {_COLUMNS}, 1 - (embedding <=> %(q)s) AS score FROM memories"
            f" WHERE {_READABLE} AND embedding IS NOT NULL"
            " ORDER BY embedding <=> %(q)s LIMIT %(k)s",
            {"ns": namespace, "q": _vector(embedding), "k": limit}, prepare=True)
        return [_record(row, row["score"]) for row in rows]

    async def search(self, namespace: str, text: str, *, limit: int = 10) -> list[MemoryRecord]:
        """Hybrid recall: full-text and vector rankings fused by reciprocal rank fusion.

        Full text tries all topic words first (cheap, precise) and only falls back to any
        word when that finds nothing; each ranker contributes a bounded candidate list.
        """
        words = topic_words(text)
        embedding = await self._embed(text)
        if not words and embedding is None:
            return await self.recent(namespace, limit=limit)
        if self.recall_index is not None:
            ranked = await self.recall_index.search(
                namespace, " ".join(words), embedding,
                candidates=max(_RRF_CANDIDATES, limit), limit=limit,
                max_distance=1.0 - self.min_similarity, rrf_k=_RRF_K)
            if ranked is not None:
                return await self._ranked_records(namespace, ranked)
        rows = await self.database.read(
            namespace,
            f"""
            WITH fts_all AS ({_fts_ranked("all")}
            ), fts_any AS ({_fts_ranked("any", "NOT EXISTS (SELECT 1 FROM fts_all)")}
            ), vec AS (
                -- The distance bound outside the kNN scan: inside, an iterative index scan
                -- would keep walking the graph for rows that can never pass it.
                SELECT id, r FROM (
                    SELECT id, embedding <=> %(q)s AS d,
                           row_number() OVER (ORDER BY embedding <=> %(q)s) AS r
                    FROM memories
                    WHERE %(q)s::vector IS NOT NULL AND {_READABLE} AND embedding IS NOT NULL
                    ORDER BY embedding <=> %(q)s LIMIT %(cand)s
                ) nearest
                WHERE d <= %(max_dist)s
            ), fused AS (
                SELECT id, sum(1.0 / (%(rrf_k)s + r)) AS score
                FROM (SELECT * FROM fts_all UNION ALL SELECT * FROM fts_any
                      UNION ALL SELECT * FROM vec) ranked
                GROUP BY id
            )
            SELECT {_COLUMNS}, fused.score FROM fused JOIN memories USING (id)
            ORDER BY fused.score DESC, importance DESC, created_at DESC LIMIT %(k)s
            """,
            {"ns": namespace, "all": " & ".join(words), "any": " | ".join(words),
             "scope": _scope_query(namespace),
             "q": None if embedding is None else _vector(embedding),
             "cand": max(_RRF_CANDIDATES, limit), "scan": _FTS_SCAN, "pool": _FTS_POOL,
             "rrf_k": _RRF_K, "k": limit, "max_dist": 1.0 - self.min_similarity}, prepare=True)
        return [_record(row, row["score"]) for row in rows]

    async def _ranked_records(self, namespace: str, ranked: Sequence[tuple[int, float]]
                              ) -> list[MemoryRecord]:
        """The rows of the derived index's ranking, in its order. Readability is checked
        here again; a memory deleted since the ranking is left out."""
        if not ranked:
            return []
        rows = await self.database.read(
            namespace, f"SELECT {_COLUMNS} FROM memories WHERE {_READABLE} AND id = ANY(%(ids)s)",
            {"ns": namespace, "ids": [memory_id for memory_id, _ in ranked]}, prepare=True)
        by_id = {row["id"]: row for row in rows}
        return [_record(by_id[memory_id], score) for memory_id, score in ranked
                if memory_id in by_id]

    async def by_tag(self, namespace: str, tags: Sequence[str], *, limit: int = 10
                     ) -> list[MemoryRecord]:
        wanted = [t.strip().lower() for t in tags if t.strip()]
        rows = await self.database.read(
            namespace,
            f"SELECT {_COLUMNS} FROM memories WHERE {_READABLE} AND tags && %(tags)s"
            " ORDER BY importance DESC, created_at DESC LIMIT %(k)s",
            # Not prepared: after five runs PostgreSQL may switch to a generic plan that
            # ignores how common the tag is, measured 2x slower (bench/README.md).
            {"ns": namespace, "tags": wanted, "k": limit})
        return [_record(row) for row in rows]

    async def by_importance(self, namespace: str, *, min_importance: float = 0.7,
                            limit: int = 10) -> list[MemoryRecord]:
        rows = await self.database.read(
            namespace,
            f"SELECT {_COLUMNS} FROM memories WHERE {_READABLE} AND importance >= %(min)s"
            " ORDER BY importance DESC, created_at DESC LIMIT %(k)s",
            {"ns": namespace, "min": min_importance, "k": limit}, prepare=True)
        return [_record(row) for row in rows]

    async def recent(self, namespace: str, *, limit: int = 10, days: float | None = None
                     ) -> list[MemoryRecord]:
        """Newest first; with ``days``, only memories created within that many days."""
        # Own and shared rows as two index-ordered scans merged, rather than one OR filter
        # that forces reading and sorting the whole readable set.
        window = ("(%(days)s::float8 IS NULL"
                  " OR created_at >= now() - make_interval(secs => %(days)s::float8 * 86400))")
        rows = await self.database.read(
            namespace,
            f"SELECT * FROM ("
            f" (SELECT {_COLUMNS} FROM memories WHERE namespace = %(ns)s AND {window}"
            "  ORDER BY created_at DESC, id DESC LIMIT %(k)s)"
            " UNION ALL"
            f" (SELECT {_COLUMNS} FROM memories WHERE visibility = 'shared'"
            f"  AND namespace <> %(ns)s AND {window}"
            "  ORDER BY created_at DESC, id DESC LIMIT %(k)s)"
            ") readable ORDER BY created_at DESC, id DESC LIMIT %(k)s",
            {"ns": namespace, "k": limit, "days": days}, prepare=True)
        return [_record(row) for row in rows]

    async def aggregate(self, namespace: str, text: str = "", *, top_tags: int = 10
                        ) -> dict[str, Any]:
        """Counts and top tags over the namespace, or over memories matching ``text``."""
        words = topic_words(text)
        where = _READABLE
        params: dict[str, Any] = {"ns": namespace, "top": top_tags}
        if words:
            where += " AND content_tsv @@ to_tsquery('english', %(q)s)"
            params["q"] = " | ".join(words)
        totals = await self.database.read(
            namespace,
            f"SELECT count(*) AS total, coalesce(avg(importance), 0) AS avg_importance,"
            f" min(created_at) AS oldest, max(created_at) AS newest FROM memories WHERE {where}",
            params)
        tags = await self.database.read(
            namespace,
            f"SELECT tag, count(*) AS count FROM memories, unnest(tags) AS tag WHERE {where}"
            " GROUP BY tag ORDER BY count DESC, tag LIMIT %(top)s",
            params)
        row = totals[0]
        return {
            "total": int(row["total"]),
            "avg_importance": round(float(row["avg_importance"]), 4),
            "oldest": row["oldest"],
            "newest": row["newest"],
            "top_tags": [{"tag": t["tag"], "count": int(t["count"])} for t in tags],
            "filter": words,
        }

    async def count(self, namespace: str) -> int:
        """Memories this namespace owns."""
        rows = await self.database.read(
            namespace,
            "SELECT count(*) AS n FROM memories WHERE namespace = %s", (namespace,))
        return int(rows[0]["n"])


def _scope_query(namespace: str) -> str:
    """The tsquery of the lexemes content_tsv tags readable rows with: the namespace's own,
    and shared ones (quoted as tsquery lexemes: the value is data, never syntax)."""
    own = "ns " + namespace
    return "'" + own.replace("\\", "\\\\").replace("'", "''") + "' | 'vis shared'"


def _vector(values: Vector) -> PgVector:
    return PgVector(values)
