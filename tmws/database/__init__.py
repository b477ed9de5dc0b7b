"""PostgreSQL access: the embedded default server, migrations and the connection pool."""

from tmws.database._embedded import EmbeddedPostgres
from tmws.database._migrate import (
    PGVECTOR_HELP,
    available_migrations,
    require_current_schema,
    upgrade,
)
from tmws.database._pool import Database, get_pool_stats
from tmws.database._vectors import check_embedding_config, reembed

__all__ = [
    "PGVECTOR_HELP",
    "Database",
    "EmbeddedPostgres",
    "available_migrations",
    "check_embedding_config",
    "get_pool_stats",
    "reembed",
    "require_current_schema",
    "upgrade",
]
