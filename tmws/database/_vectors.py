"""The vector index: DDL from the settings, and the query-time knobs.

Index DDL cannot take bind parameters; every number in it comes from validated integer
settings, formatted with ``int()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from pgvector import Vector as PgVector

from tmws.config import Settings
from tmws.errors import DatabaseError

if TYPE_CHECKING:
    from tmws.database._pool import Database
    from tmws.embeddings import EmbeddingProvider

__all__ = [
    "INDEX_NAME",
    "check_embedding_config",
    "create_index_sql",
    "parse_version",
    "reembed",
    "search_settings_sql",
]

INDEX_NAME = "idx_memory_embedding"


def create_index_sql(settings: Settings) -> str:
    """``CREATE INDEX`` for the configured kind (ivfflat, the default, or HNSW)."""
    if settings.vector_index == "hnsw":
        return (f"CREATE INDEX {INDEX_NAME} ON memories USING hnsw (embedding vector_cosine_ops)"
                f" WITH (m = {int(settings.hnsw_m)},"
                f" ef_construction = {int(settings.hnsw_ef_construction)})")
    return (f"CREATE INDEX {INDEX_NAME} ON memories USING ivfflat (embedding vector_cosine_ops)"
            f" WITH (lists = {int(settings.vector_lists)})")


# pgvector 0.8 keeps an HNSW scan going until enough rows pass the query's filter.
ITERATIVE_SCAN_SINCE: Final = (0, 8)


def search_settings_sql(settings: Settings, pgvector: tuple[int, ...] | None = None, *,
                        local: bool = False) -> str:
    """Session settings for kNN queries: probes for ivfflat; for HNSW, ef_search and, with
    pgvector >= 0.8 (``pgvector``, the installed version) and TMWS_VECTOR_ITERATIVE_SCAN,
    iterative scans in strict order, so a namespace filter cannot leave a page short.
    ``local``: as ``SET LOCAL``, for the current transaction only."""
    verb = "SET LOCAL" if local else "SET"
    if settings.vector_index == "hnsw":
        sql = f"{verb} hnsw.ef_search = {int(settings.hnsw_ef_search)}"
        if settings.vector_iterative_scan and pgvector is not None \
                and pgvector >= ITERATIVE_SCAN_SINCE:
            sql += f"; {verb} hnsw.iterative_scan = strict_order"
        return sql
    return f"{verb} ivfflat.probes = {int(settings.vector_probes)}"


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """"0.8.5" -> (0, 8, 5); None for no extension or an unreadable version."""
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split(".")[:3])
    except ValueError:
        return None


async def check_embedding_config(database: Database, settings: Settings) -> None:
    """Refuse to start when the stored vectors were made by another provider or dimension:
    mixing them would make every similarity search silently wrong."""
    from tmws.embeddings import provider_identity

    rows = await database.fetch("SELECT provider, model, dim FROM tmws_embedding_config")
    if not rows:
        raise DatabaseError("tmws_embedding_config is empty; run `tmws db upgrade`")
    stored = (rows[0]["provider"], rows[0]["model"], int(rows[0]["dim"]))
    wanted = (*provider_identity(settings), settings.embedding_dim)
    if stored != wanted:
        raise DatabaseError(
            f"the stored embeddings come from {stored[0]} ({stored[1]}, {stored[2]} "
            f"dimensions) but the settings ask for {wanted[0]} ({wanted[1]}, {wanted[2]} "
            "dimensions) (TMWS_EMBEDDING_PROVIDER, TMWS_EMBEDDING_MODEL, TMWS_EMBEDDING_DIM): "
            "restore the previous settings, or run `tmws memories reembed` to rebuild every "
            "embedding with the new ones")


async def reembed(database: Database, settings: Settings, provider: EmbeddingProvider, *,
                  batch_size: int = 500,
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Recompute every embedding with ``provider`` (resizing the column if the dimension
    changed), rebuild the vector index and record the new configuration.

    Returns the number of memories re-embedded. Holds the migration lock throughout, so it
    never races an upgrade or another re-embed: on a session of its own (behind a
    transaction pooler, through TMWS_DATABASE_DIRECT_URL).
    """
    from tmws.database._migrate import ADVISORY_LOCK_KEY

    async with database.session("tmws memories reembed") as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            total_row = await (await conn.execute("SELECT count(*) AS n FROM memories")
                               ).fetchone()
            total = int(total_row["n"]) if total_row else 0
            await conn.execute(f"DROP INDEX IF EXISTS {INDEX_NAME}")
            dim = int(settings.embedding_dim)
            await conn.execute(f"ALTER TABLE memories ALTER COLUMN embedding TYPE vector({dim})"
                               " USING NULL")
            done, last_id = 0, 0
            while True:
                rows = await (await conn.execute(
                    "SELECT id, content FROM memories WHERE id > %s ORDER BY id LIMIT %s",
                    (last_id, batch_size))).fetchall()
                if not rows:
                    break
                vectors = await provider.embed([row["content"] for row in rows])
                async with conn.transaction(), conn.cursor() as cursor:
                    await cursor.executemany(
                        "UPDATE memories SET embedding = %s WHERE id = %s",
                        [(None if v is None else PgVector(v), row["id"])
                         for v, row in zip(vectors, rows, strict=True)])
                done += len(rows)
                last_id = rows[-1]["id"]
                if progress is not None:
                    progress(done, total)
            # Built after the data is in: ivfflat picks its centroids from what is there.
            await conn.execute(create_index_sql(settings))
            await conn.execute(
                "UPDATE tmws_embedding_config SET provider = %s, model = %s, dim = %s,"
                " updated_at = now()", (provider.name, provider.model, dim))
            await conn.execute("ANALYZE memories")
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return done
