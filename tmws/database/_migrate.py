"""Schema migrations, run by Alembic from the top-level ``migrations/`` directory.

``tmws db upgrade``, the embedded database's start-up and ``alembic upgrade head`` from the
repository root (deploy/README.md, Deployment Guide, Step 4) all go through
:func:`run_alembic_environment` (``migrations/env.py`` calls it): it refuses a server
without pgvector with installation instructions, and holds an advisory lock so that
instances starting together migrate one at a time. Each revision runs in its own
transaction; re-running is a no-op. Behind a transaction-mode pooler
(TMWS_DATABASE_POOL_MODE=transaction), where a lock held across transactions could outlive
the migration on a server connection other clients share, every pending revision runs in
one transaction under a transaction-level lock instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg.rows import TupleRow

from tmws.config import Settings
from tmws.database._pool import first_line
from tmws.database._pooler import transaction_pooled
from tmws.errors import DatabaseError, ExtensionMissingError

__all__ = [
    "ADVISORY_LOCK_KEY",
    "PGVECTOR_HELP",
    "Migration",
    "alembic_config",
    "available_migrations",
    "current_revision",
    "migration_settings",
    "require_current_schema",
    "run_alembic_environment",
    "upgrade",
]

logger = logging.getLogger("tmws.database")

# Arbitrary constant shared by every tmws instance: "tmws" in ASCII.
ADVISORY_LOCK_KEY = 0x746D7773
_ALEMBIC_LOCK = threading.Lock()

PGVECTOR_HELP = (
    "the PostgreSQL server has no 'vector' extension (pgvector). Install it on the "
    "database server, e.g. `apt-get install postgresql-<version>-pgvector` or build it from "
    "https://github.com/pgvector/pgvector, then run `tmws db upgrade` again; or leave "
    "TMWS_DATABASE_URL unset to use the embedded PostgreSQL, which bundles pgvector"
)


@dataclass(frozen=True)
class Migration:
    revision: str
    description: str


def _script_location() -> str:
    # In the repository and in the wheel, tmws/_migrations is the top-level migrations/.
    return str(Path(str(resources.files("tmws") / "_migrations")))


def alembic_config(conninfo: str | None = None, settings: Settings | None = None) -> Config:
    """An Alembic configuration for tmws's migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", _script_location())
    if conninfo is not None:
        config.attributes["conninfo"] = conninfo
    if settings is not None:
        config.attributes["settings"] = settings
    return config


def migration_settings() -> Settings:
    """Inside a revision: the settings of this upgrade (embedding dimension, index kind)."""
    from alembic import op

    config = op.get_context().config
    settings = None if config is None else config.attributes.get("settings")
    return settings if isinstance(settings, Settings) else Settings.from_env()


def available_migrations() -> list[Migration]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    revisions = list(script.walk_revisions())
    revisions.reverse()
    return [Migration(r.revision, (r.doc or "").strip().splitlines()[0]) for r in revisions]


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations/versions holds no revision"
    return head


async def current_revision(conn: psycopg.AsyncConnection[TupleRow]) -> str | None:
    exists = await (await conn.execute(
        "SELECT to_regclass('alembic_version') IS NOT NULL")).fetchone()
    if not exists or not exists[0]:
        return None
    row = await (await conn.execute("SELECT version_num FROM alembic_version")).fetchone()
    return None if row is None else str(row[0])


async def upgrade(conninfo: str, settings: Settings | None = None, *,
                  wait: float = 0.0) -> list[Migration]:
    """Apply every pending migration; returns those applied by this call.

    ``settings`` (default: from the environment) fix the embedding dimension and the vector
    index kind of a new table. ``wait``: seconds to wait for PostgreSQL to accept
    connections (TMWS_STARTUP_WAIT: containers start in no particular order).
    """
    before = await _revision_of(conninfo, wait)
    try:
        await asyncio.to_thread(_upgrade_head, conninfo, settings)
    except DatabaseError:
        raise
    except Exception as exc:  # Alembic and SQLAlchemy raise many kinds; name the cause
        raise DatabaseError(f"migration failed: {first_line(exc)}") from exc
    revisions = [m.revision for m in available_migrations()]
    start = 0 if before is None else revisions.index(before) + 1
    return available_migrations()[start:]


def _upgrade_head(conninfo: str, settings: Settings | None) -> None:
    # Alembic keeps the running environment in module globals: one upgrade per process at a
    # time (the advisory lock then orders processes).
    with _ALEMBIC_LOCK:
        command.upgrade(alembic_config(conninfo, settings), "head")


async def require_current_schema(conninfo: str, *, wait: float = 0.0) -> None:
    """Raise DatabaseError unless every migration has been applied to this database.

    ``wait``: seconds to wait for PostgreSQL to accept connections and for the migrations
    (``tmws db upgrade``, run beside this process) to be applied.
    """
    deadline = time.monotonic() + wait
    current = await _revision_of(conninfo, wait)
    announced = False
    while current != _head() and time.monotonic() < deadline:
        if not announced:
            logger.info("waiting up to %.0f s for the schema to be migrated", wait)
            announced = True
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        current = await _revision_of(conninfo, max(0.0, deadline - time.monotonic()))
    if current != _head():
        revisions = [m.revision for m in available_migrations()]
        start = 0 if current is None else revisions.index(current) + 1
        pending = ", ".join(revisions[start:])
        raise DatabaseError(f"the database schema is not current (pending: {pending}); "
                            "run `tmws db upgrade` first")


async def _revision_of(conninfo: str, wait: float = 0.0) -> str | None:
    """The applied revision; waits up to ``wait`` seconds for the server to take connections."""
    deadline = time.monotonic() + wait
    announced = False
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                return await current_revision(conn)
        except psycopg.OperationalError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseError(
                    f"cannot connect to PostgreSQL: {first_line(exc)}") from None
            if not announced:
                logger.info("waiting up to %.0f s for PostgreSQL: %s", wait, first_line(exc))
                announced = True
            await asyncio.sleep(min(1.0, left))


def _sqlalchemy_url(conninfo: str) -> str:
    for scheme in ("postgresql://", "postgres://"):
        if conninfo.startswith(scheme):
            return "postgresql+psycopg://" + conninfo[len(scheme):]
    raise DatabaseError("TMWS_DATABASE_URL must be a postgresql:// connection string")


def run_alembic_environment(context: Any) -> None:
    """The body of ``migrations/env.py``."""
    if context.is_offline_mode():
        raise DatabaseError("offline (--sql) migrations are not supported: tmws checks the "
                            "server for pgvector before migrating")
    conninfo = context.config.attributes.get("conninfo")
    settings = context.config.attributes.get("settings")
    if not isinstance(settings, Settings):
        settings = Settings.from_env()
    embedded = None
    if conninfo is None:
        from tmws.database._embedded import EmbeddedPostgres

        conninfo = settings.database_url
        if conninfo is None:
            embedded = EmbeddedPostgres(settings.data_dir)
            conninfo = embedded.start()
    try:
        _migrate(context, conninfo, pooled=transaction_pooled(settings))
    finally:
        if embedded is not None:
            embedded.stop()


def _migrate(context: Any, conninfo: str, *, pooled: bool = False) -> None:
    import sqlalchemy
    from sqlalchemy import pool, text

    engine = sqlalchemy.create_engine(
        _sqlalchemy_url(conninfo), poolclass=pool.NullPool,
        connect_args={"prepare_threshold": None} if pooled else {})
    try:
        with engine.connect() as connection:
            available = connection.execute(
                text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()
            if available is None:
                raise ExtensionMissingError(PGVECTOR_HELP)
            if pooled:
                _migrate_in_one_transaction(context, connection)
                return
            # A session-level lock outlives the per-revision transactions below.
            connection.execute(text("SELECT pg_advisory_lock(:key)"),
                               {"key": ADVISORY_LOCK_KEY})
            connection.commit()
            try:
                context.configure(connection=connection, transaction_per_migration=True)
                with context.begin_transaction():
                    context.run_migrations()
                connection.commit()
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": ADVISORY_LOCK_KEY})
                connection.commit()
    except sqlalchemy.exc.OperationalError as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {first_line(exc.orig or exc)}") \
            from None
    finally:
        engine.dispose()


def _migrate_in_one_transaction(context: Any, connection: Any) -> None:
    """Every pending revision in the transaction the caller's first statement opened, under
    the lock as ``pg_advisory_xact_lock``: a transaction pooler keeps one server connection
    for the whole of it, and the lock ends with it, whatever happens to the client."""
    from sqlalchemy import text

    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    context.configure(connection=connection, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
