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

from tmws.database import Database
from tmws.errors import InvalidRequestError

__all__ = ["MemoryRecord", "MemoryStore", "topic_words"]

DEFAULT_NAMESPACE: Final = "default"
MAX_CONTENT_CHARS: Final = 100_000
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
    created_at: datetime
    score: float | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


_COLUMNS: Final = "id, namespace, content, memory_type, importance, tags, metadata, created_at"


def _record(row: Mapping[str, Any], score: float | None = None) -> MemoryRecord:
    content: str = row["content"]
    return MemoryRecord(
        id=row["id"], namespace=row["namespace"], content=content[:PREVIEW_CHARS],
        truncated=len(content) > PREVIEW_CHARS, memory_type=row["memory_type"],
        importance=round(float(row["importance"]), 4), tags=list(row["tags"]),
        created_at=row["created_at"], metadata=row["metadata"] or {},
        score=None if score is None else round(float(score), 4),
    )


class MemoryStore:
    """Memory operations over one database."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._generations: dict[str, int] = {}

    def generation(self, namespace: str) -> int:
        """Bumped on every write to the namespace."""
        return self._generations.get(namespace, 0)

    def _bump(self, namespace: str) -> None:
        self._generations[namespace] = self._generations.get(namespace, 0) + 1

    async def store(self, namespace: str, content: str, *, memory_type: str = "general",
                    importance: float = 0.5, tags: Iterable[str] = (),
                    metadata: Mapping[str, Any] | None = None) -> int:
        content = content.strip()
        if not content:
            raise InvalidRequestError("memory content is empty")
        if len(content) > MAX_CONTENT_CHARS:
            raise InvalidRequestError(
                f"memory content is {len(content)} characters; the limit is {MAX_CONTENT_CHARS}")
        if not 0.0 <= importance <= 1.0:
            raise InvalidRequestError(f"importance must be between 0 and 1 (got {importance})")
        tag_list = sorted({str(t).strip().lower() for t in tags if str(t).strip()})
        rows = await self.database.fetch(
            "INSERT INTO memories (namespace, content, memory_type, importance, tags, metadata)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (namespace, content, memory_type, importance, tag_list,
             msgspec.json.encode(dict(metadata or {})).decode()),
        )
        self._bump(namespace)
        return int(rows[0]["id"])

    async def get(self, namespace: str, memory_id: int) -> MemoryRecord | None:
        rows = await self.database.fetch(
            f"SELECT {_COLUMNS} FROM memories WHERE namespace = %s AND id = %s",
            (namespace, memory_id))
        return _record(rows[0]) if rows else None

    async def delete(self, namespace: str, memory_id: int) -> bool:
        rows = await self.database.fetch(
            "DELETE FROM memories WHERE namespace = %s AND id = %s RETURNING id",
            (namespace, memory_id))
        if rows:
            self._bump(namespace)
        return bool(rows)

    async def search(self, namespace: str, text: str, *, limit: int = 10) -> list[MemoryRecord]:
        """Full-text recall: any topic word may match; best-ranked, then most important."""
        words = topic_words(text)
        if not words:
            return await self.recent(namespace, limit=limit)
        rows = await self.database.fetch(
            f"SELECT {_COLUMNS}, ts_rank_cd(to_tsvector('english', content), q) AS score"
            " FROM memories, to_tsquery('english', %s) AS q"
            " WHERE namespace = %s AND to_tsvector('english', content) @@ q"
            " ORDER BY score DESC, importance DESC, created_at DESC LIMIT %s",
            (" | ".join(words), namespace, limit))
        return [_record(row, row["score"]) for row in rows]

    async def by_tag(self, namespace: str, tags: Sequence[str], *, limit: int = 10
                     ) -> list[MemoryRecord]:
        wanted = [t.strip().lower() for t in tags if t.strip()]
        rows = await self.database.fetch(
            f"SELECT {_COLUMNS} FROM memories WHERE namespace = %s AND tags && %s"
            " ORDER BY importance DESC, created_at DESC LIMIT %s",
            (namespace, wanted, limit))
        return [_record(row) for row in rows]

    async def by_importance(self, namespace: str, *, min_importance: float = 0.7,
                            limit: int = 10) -> list[MemoryRecord]:
        rows = await self.database.fetch(
            f"SELECT {_COLUMNS} FROM memories WHERE namespace = %s AND importance >= %s"
            " ORDER BY importance DESC, created_at DESC LIMIT %s",
            (namespace, min_importance, limit))
        return [_record(row) for row in rows]

    async def recent(self, namespace: str, *, limit: int = 10) -> list[MemoryRecord]:
        rows = await self.database.fetch(
            f"SELECT {_COLUMNS} FROM memories WHERE namespace = %s"
            " ORDER BY created_at DESC, id DESC LIMIT %s",
            (namespace, limit))
        return [_record(row) for row in rows]

    async def aggregate(self, namespace: str, text: str = "", *, top_tags: int = 10
                        ) -> dict[str, Any]:
        """Counts and top tags over the namespace, or over memories matching ``text``."""
        words = topic_words(text)
        where = "namespace = %s"
        params: list[Any] = [namespace]
        if words:
            where += " AND to_tsvector('english', content) @@ to_tsquery('english', %s)"
            params.append(" | ".join(words))
        totals = await self.database.fetch(
            f"SELECT count(*) AS total, coalesce(avg(importance), 0) AS avg_importance,"
            f" min(created_at) AS oldest, max(created_at) AS newest FROM memories WHERE {where}",
            params)
        tags = await self.database.fetch(
            f"SELECT tag, count(*) AS count FROM memories, unnest(tags) AS tag WHERE {where}"
            " GROUP BY tag ORDER BY count DESC, tag LIMIT %s",
            [*params, top_tags])
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
        rows = await self.database.fetch(
            "SELECT count(*) AS n FROM memories WHERE namespace = %s", (namespace,))
        return int(rows[0]["n"])
