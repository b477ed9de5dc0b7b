"""Versioned schema migrations: ``migrations/NNNN_name.sql``, applied in order.

An advisory lock serialises concurrent upgrades (several instances starting at once);
each migration runs in its own transaction and is recorded in ``tmws_schema_migrations``,
so re-running is a no-op.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from tmws.database._pool import first_line
from tmws.errors import DatabaseError, ExtensionMissingError

__all__ = [
    "Migration",
    "applied_versions",
    "available_migrations",
    "require_current_schema",
    "upgrade",
]

logger = logging.getLogger("tmws.database")

# Arbitrary constant shared by every tmws instance: "tmws" in ASCII.
_ADVISORY_LOCK_KEY = 0x746D7773
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

PGVECTOR_HELP = (
    "the PostgreSQL server has no 'vector' extension (pgvector). Install it on the "
    "database server, e.g. `apt-get install postgresql-<version>-pgvector` or build it from "
    "https://github.com/pgvector/pgvector, then run `tmws db upgrade` again; or leave "
    "TMWS_DATABASE_URL unset to use the embedded PostgreSQL, which bundles pgvector"
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def _migrations_dir() -> Path:
    # In the wheel, tmws/_migrations is the repository's top-level migrations/ directory.
    return Path(str(resources.files("tmws") / "_migrations"))


def available_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or _migrations_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILENAME.match(path.name)
        if match is None:
            raise DatabaseError(f"migration file {path} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DatabaseError(f"duplicate migration versions in {directory}")
    return found


async def applied_versions(conn: psycopg.AsyncConnection[TupleRow]) -> set[int]:
    exists = await (await conn.execute(
        "SELECT to_regclass('tmws_schema_migrations') IS NOT NULL")).fetchone()
    if not exists or not exists[0]:
        return set()
    rows = await (await conn.execute("SELECT version FROM tmws_schema_migrations")).fetchall()
    return {int(row[0]) for row in rows}


async def upgrade(conninfo: str, *, directory: Path | None = None) -> list[Migration]:
    """Apply every pending migration; returns those applied by this call."""
    migrations = available_migrations(directory)
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {first_line(exc)}") from None
    applied: list[Migration] = []
    async with conn:
        await _require_pgvector(conn)
        await conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS tmws_schema_migrations ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())")
            done = await applied_versions(conn)
            for migration in migrations:
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql.encode())  # bytes: trusted file, not a literal
                    await conn.execute(
                        "INSERT INTO tmws_schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name))
                logger.info("applied migration %04d_%s", migration.version, migration.name)
                applied.append(migration)
        except psycopg.Error as exc:
            raise DatabaseError(f"migration failed: {first_line(exc)}") from exc
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    return applied


async def _require_pgvector(conn: psycopg.AsyncConnection[TupleRow]) -> None:
    row = await (await conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).fetchone()
    if row is None:
        raise ExtensionMissingError(PGVECTOR_HELP)


async def require_current_schema(conninfo: str) -> None:
    """Raise DatabaseError unless every migration has been applied to this database."""
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            done = await applied_versions(conn)
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            f"cannot connect to PostgreSQL (TMWS_DATABASE_URL): {first_line(exc)}") from None
    missing = [m for m in available_migrations() if m.version not in done]
    if missing:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in missing)
        raise DatabaseError(f"the database schema is not current (pending: {names}); "
                            "run `tmws db upgrade` first")
