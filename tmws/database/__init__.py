"""PostgreSQL access: the embedded default server, migrations and the connection pool."""

from tmws.database._activity import service_connections, slow_statements
from tmws.database._bulk import ImportReport, Rejection, export_memories, import_memories
from tmws.database._embedded import EmbeddedPostgres
from tmws.database._migrate import (
    PGVECTOR_HELP,
    available_migrations,
    require_current_schema,
    upgrade,
)
from tmws.database._pool import (
    Budget,
    Database,
    database_fence,
    get_pool_stats,
    request_budget,
)
from tmws.database._reindex import (
    ReindexReport,
    format_reindex_report,
    maybe_reindex,
    reindex,
)
from tmws.database._replicas import ReplicatedDatabase, service_database
from tmws.database._server import DatabaseServer, Prepare, configured_server, open_server
from tmws.database._vectors import check_embedding_config, reembed

__all__ = [
    "PGVECTOR_HELP",
    "Budget",
    "Database",
    "DatabaseServer",
    "EmbeddedPostgres",
    "ImportReport",
    "Prepare",
    "ReindexReport",
    "Rejection",
    "ReplicatedDatabase",
    "available_migrations",
    "check_embedding_config",
    "configured_server",
    "database_fence",
    "export_memories",
    "format_reindex_report",
    "get_pool_stats",
    "import_memories",
    "maybe_reindex",
    "open_server",
    "reembed",
    "reindex",
    "request_budget",
    "require_current_schema",
    "service_connections",
    "service_database",
    "slow_statements",
    "upgrade",
]
