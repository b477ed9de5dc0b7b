"""The vector index: DDL from the settings, and the query-time knobs.

Index DDL cannot take bind parameters; every number in it comes from validated integer
settings, formatted with ``int()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tmws.config import Settings
from tmws.errors import DatabaseError

if TYPE_CHECKING:
    from tmws.database._pool import Database

__all__ = ["INDEX_NAME", "check_embedding_config", "create_index_sql", "search_settings_sql"]

INDEX_NAME = "idx_memory_embedding"


def create_index_sql(settings: Settings) -> str:
    """``CREATE INDEX`` for the configured kind (ivfflat as in the guide, or HNSW)."""
    if settings.vector_index == "hnsw":
        return (f"CREATE INDEX {INDEX_NAME} ON memories USING hnsw (embedding vector_cosine_ops)"
                f" WITH (m = {int(settings.hnsw_m)},"
                f" ef_construction = {int(settings.hnsw_ef_construction)})")
    return (f"CREATE INDEX {INDEX_NAME} ON memories USING ivfflat (embedding vector_cosine_ops)"
            f" WITH (lists = {int(settings.vector_lists)})")


def search_settings_sql(settings: Settings) -> str:
    """Session settings for kNN queries (probes for ivfflat, ef_search for HNSW)."""
    if settings.vector_index == "hnsw":
        return f"SET hnsw.ef_search = {int(settings.hnsw_ef_search)}"
    return f"SET ivfflat.probes = {int(settings.vector_probes)}"


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
