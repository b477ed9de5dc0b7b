"""Installation checks (``tmws verify``; deploy/README.md, "Deployment Guide").

:func:`run_verification` checks a configuration from outside (``tmws verify``, and ``tmws
restore`` after a restore): it opens its own connections. :func:`verify_engine` checks a
running engine with that engine's own pool, cache and router (``GET /api/v1/verify``).

Every check runs, under its own timeout, whatever the others found: a database outage fails
the database checks while Redis, the pattern library, the token round-trip and the
infrastructure execution are still checked. A check never raises; its failure is its detail.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec
import psycopg
from psycopg.rows import dict_row

from tmws.config import Settings
from tmws.errors import AuthenticationError, ConfigError
from tmws.health import RedisStatus
from tmws.models import ExecutionMode, PatternDefinition, PatternType

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine
    from tmws.patterns import PatternLibrary

__all__ = [
    "CHECK_TIMEOUT",
    "GUIDE_INDEXES",
    "VERIFY_NAMESPACE",
    "Check",
    "Status",
    "VerificationReport",
    "format_report",
    "load_settings",
    "run_verification",
    "verify_command",
    "verify_engine",
]

Status = Literal["ok", "warn", "fail"]

# The standalone engine's handler timeout floor (ms), so a verification does not fail on
# a slow first answer.
_EXECUTE_TIMEOUT_MS: Final = 5000
# Seconds one check may take (the executions get their pattern type's own timeout inside).
CHECK_TIMEOUT: Final = 20.0
# Executions run in a namespace of their own: they read nothing private and write nothing.
VERIFY_NAMESPACE: Final = "tmws-verify"
# The indexes of deploy/README.md's "Performance Tuning", by name and access method (the vector
# index's method follows TMWS_VECTOR_INDEX); migrations 0001 and 0002 create them.
GUIDE_INDEXES: Final = ("idx_memory_content_pattern", "idx_memory_importance_created",
                        "idx_memory_tags", "idx_memory_embedding")
_METHODS: Final = {"idx_memory_content_pattern": "gin", "idx_memory_importance_created": "btree",
                   "idx_memory_tags": "gin"}
# The metric families of deploy/README.md's "Monitoring and Alerts" (counters without
# _total, as the parser names them).
_GUIDE_METRICS: Final = ("tmws_pattern_executions", "tmws_pattern_execution_duration_seconds",
                         "tmws_pattern_cache_hit_rate", "tmws_pattern_tokens_used",
                         "tmws_database_connections_active",
                         "tmws_database_query_duration_seconds", "tmws_info")
_CONNECT_TIMEOUT: Final = 5  # seconds, for the checks' own connections
_EXIT: Final = {"ok": 0, "warn": 1, "fail": 2}


class Check(msgspec.Struct, frozen=True):
    """One check: its name, ``ok``/``warn``/``fail``, and what it found or what to do."""

    name: str
    status: Status
    detail: str


class VerificationReport(msgspec.Struct, frozen=True):
    """Every check; ``exit_code`` 0 when all are ok, 1 with a warning and no failure, 2 with
    any failure (``status`` says the same in words)."""

    checks: list[Check]
    exit_code: int
    status: Status

    @classmethod
    def of(cls, checks: Sequence[Check]) -> VerificationReport:
        code = max((_EXIT[check.status] for check in checks), default=0)
        status: Status = "fail" if code == 2 else "warn" if code == 1 else "ok"
        return cls(list(checks), code, status)

    def check(self, name: str) -> Check:
        """The check called ``name`` (KeyError if there is none)."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)


class _Unavailable(Exception):
    """A check that cannot run because something it needs failed (said in its own check)."""


Connect = Callable[[], AbstractAsyncContextManager[Any]]


class _Target:
    """What the checks run against: a configuration (standalone) or a running engine."""

    def __init__(self, settings: Settings, *, embedded: bool) -> None:
        self.settings = settings
        self.embedded = embedded
        self.connect: Connect | None = None
        self.no_database = "the database check failed"
        self.library: PatternLibrary | None = None
        self.engine: PatternExecutionEngine | None = None
        self.no_engine = "no engine could be built"
        self.redis_ping: Callable[[], Awaitable[RedisStatus]] | None = None

    def connection(self) -> AbstractAsyncContextManager[Any]:
        if self.connect is None:
            raise _Unavailable(f"not checked: {self.no_database}")
        return self.connect()


# -- running checks ------------------------------------------------------------------------


async def _run(name: str, check: Callable[[], Awaitable[tuple[Status, str]]],
               timeout: float = CHECK_TIMEOUT) -> Check:
    try:
        async with asyncio.timeout(timeout):
            status, detail = await check()
    except TimeoutError:
        return Check(name, "fail", f"did not finish within {timeout:g} s")
    except _Unavailable as exc:
        return Check(name, "fail", str(exc))
    except Exception as exc:  # a check reports, it never raises
        return Check(name, "fail", _describe(exc))
    return Check(name, status, detail)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


async def run_verification(settings: Settings, *, execute: bool = True,
                           settings_errors: Sequence[ConfigError] = ()) -> VerificationReport:
    """Check the installation ``settings`` describe, from outside any running service.

    Opens its own database connections (starting the embedded server when
    TMWS_DATABASE_URL is unset, as the service would), its own Redis client and, for the
    executions (unless ``execute`` is false), a small engine of its own that neither joins
    the pattern group nor writes audit records. ``settings_errors``: what
    :func:`load_settings` had to set aside to build ``settings`` at all.
    """
    target = _Target(settings, embedded=settings.database_url is None)
    checks = [await _run("settings", lambda: _settings(settings, settings_errors))]
    refused = {error.variable for error in settings_errors}
    async with AsyncExitStack() as stack:
        checks.append(await _run("database", lambda: _open_database(target, stack, refused)))
        checks += await _database_checks(target)
        if settings.env_name("redis_url") in refused:
            checks.append(Check("redis", "fail", "not checked: TMWS_REDIS_URL is refused "
                                "(see settings)"))
        else:
            target.redis_ping = lambda: _redis_standalone(settings)
            checks.append(await _run("redis", lambda: _redis(target)))
        checks.append(await _run("patterns", lambda: _patterns(target)))
        checks.append(await _run("token", lambda: _token(settings)))
        if execute:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    await _standalone_engine(target, stack)
            except Exception as exc:  # said by each execute check
                target.no_engine = f"no engine could be built: {_describe(exc)}"
            checks += await _execute_checks(target)
        checks.append(await _run("metrics", _metrics))
    return VerificationReport.of(checks)


async def verify_engine(engine: PatternExecutionEngine, *, execute: bool = True
                        ) -> VerificationReport:
    """Check a running engine with its own pool, cache and router (``GET /api/v1/verify``):
    nothing new is opened, and the executions are this engine's (audited, counted)."""
    settings = engine.settings
    target = _Target(settings, embedded=settings.database_url is None)
    target.connect = engine.database.connection
    target.engine = engine
    target.redis_ping = engine.cache.ping
    checks = [await _run("settings", lambda: _settings(settings, ())),
              await _run("database", lambda: _server(target))]
    checks += await _database_checks(target)
    checks.append(await _run("redis", lambda: _redis(target)))
    checks.append(await _run("patterns", lambda: _patterns(target)))
    checks.append(await _run("token", lambda: _token(settings)))
    if execute:
        checks += await _execute_checks(target)
    checks.append(await _run("metrics", _metrics))
    return VerificationReport.of(checks)


async def _database_checks(target: _Target) -> list[Check]:
    return [await _run("pgvector", lambda: _pgvector(target)),
            await _run("migrations", lambda: _migrations(target)),
            await _run("embedding_config", lambda: _embedding_config(target)),
            await _run("indexes", lambda: _indexes(target)),
            await _run("vector_index", lambda: _vector_index(target))]


async def _execute_checks(target: _Target) -> list[Check]:
    return [await _run(f"execute:{kind.value}", functools.partial(_execute, target, kind))
            for kind in PatternType]


# -- settings ------------------------------------------------------------------------------


def load_settings(environ: Mapping[str, str] | None = None
                  ) -> tuple[Settings | None, list[ConfigError]]:
    """Settings to verify with, even from a configuration the service would refuse.

    Each refused variable is set aside (returned, to be reported) and the rest is read
    again; a production refusal about something missing is set aside by checking the rest
    as development would. None when nothing usable is left.
    """
    env = dict(os.environ if environ is None else environ)
    environment = Settings.env_name("environment")
    production = env.get(environment, "").strip() == "production"
    errors: list[ConfigError] = []
    for _ in range(len(env) + 4):
        try:
            settings = Settings.from_env(env)
        except ConfigError as exc:
            errors.append(exc)
            if exc.variable in env:
                del env[exc.variable]  # its default, for the other checks
            elif env.get(environment, "").strip() == "production":
                env[environment] = "development"  # put back below
            elif (exc.variable == Settings.env_name("secret_key")
                  and Settings.env_name("auth_enabled") in env):
                del env[Settings.env_name("auth_enabled")]
            else:
                break
            continue
        if production:  # unvalidated: the settings check reports the refusal again
            settings = msgspec.structs.replace(settings, environment="production")
        return settings, errors
    return None, errors


async def _settings(settings: Settings, errors: Sequence[ConfigError]) -> tuple[Status, str]:
    problems = list(dict.fromkeys(str(error) for error in errors))
    try:
        settings.validate()
    except ConfigError as exc:
        problems.append(str(exc))
    summary = (f"environment {settings.environment}, auth "
               f"{'on' if settings.auth_enabled else 'off'}, database "
               f"{'external' if settings.database_url else 'embedded'}, redis "
               f"{'configured' if settings.redis_url else 'not configured'}")
    if problems:
        return "fail", "; ".join(dict.fromkeys(problems)) + \
            " (the other checks ran with the rest of the settings)"
    return "ok", summary


# -- database ------------------------------------------------------------------------------


async def _open_database(target: _Target, stack: AsyncExitStack, refused: set[str]
                         ) -> tuple[Status, str]:
    settings = target.settings
    if settings.env_name("database_url") in refused:
        target.no_database = "TMWS_DATABASE_URL is refused (see settings)"
        raise _Unavailable(f"not checked: {target.no_database}")
    if settings.database_url is None and settings.environment == "production":
        target.no_database = "TMWS_DATABASE_URL is not set (see settings)"
        raise _Unavailable("not checked: TMWS_DATABASE_URL must be set in production (the "
                           "embedded PostgreSQL is for development only)")
    from tmws.database import open_server

    server = await open_server(settings, prepare="none")  # judged as it is, never migrated
    stack.push_async_callback(server.stop)
    conninfo = server.conninfo
    target.connect = lambda: _connect(conninfo)
    try:
        return await _server(target)
    except BaseException:
        target.connect = None
        target.no_database = "the database is unreachable (see database)"
        raise


@asynccontextmanager
async def _connect(conninfo: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, row_factory=dict_row, connect_timeout=_CONNECT_TIMEOUT,
        application_name="tmws/verify")
    async with conn:
        yield conn


async def _fetch(target: _Target, query: str, params: Sequence[Any] = ()
                 ) -> list[dict[str, Any]]:
    async with target.connection() as conn:
        cursor = await conn.execute(query, params)
        rows: list[dict[str, Any]] = await cursor.fetchall()
        return rows


async def _server(target: _Target) -> tuple[Status, str]:
    async with target.connection() as conn:
        cursor = await conn.execute("SELECT current_setting('server_version') AS version,"
                                    " current_database() AS db")
        row = await cursor.fetchone()
        where = f"{conn.info.host}:{conn.info.port}/{row['db']}"
    kind = "embedded" if target.embedded else "TMWS_DATABASE_URL"
    return "ok", f"PostgreSQL {row['version']} at {where} ({kind})"


async def _pgvector(target: _Target) -> tuple[Status, str]:
    from tmws.database import PGVECTOR_HELP
    from tmws.database._vectors import parse_version

    rows = await _fetch(target, "SELECT (SELECT extversion FROM pg_extension WHERE extname ="
                        " 'vector') AS installed, (SELECT default_version FROM"
                        " pg_available_extensions WHERE name = 'vector') AS available")
    installed, available = rows[0]["installed"], rows[0]["available"]
    if installed is None and available is None:
        return "fail", PGVECTOR_HELP
    if installed is None:
        return "fail", (f"pgvector {available} is installed on the server but not created in "
                        "this database: run `tmws db upgrade` (CREATE EXTENSION vector)")
    version = parse_version(installed) or ()
    if target.settings.vector_index == "hnsw" and version < (0, 5):
        return "fail", (f"pgvector {installed} has no HNSW (0.5.0 or later), but "
                        "TMWS_VECTOR_INDEX=hnsw: upgrade pgvector or use ivfflat")
    newer = (f"; the server offers {available} (ALTER EXTENSION vector UPDATE)"
             if available and available != installed else "")
    return "ok", f"pgvector {installed}{newer}"


async def _migrations(target: _Target) -> tuple[Status, str]:
    from tmws.database import available_migrations

    known = available_migrations()
    head = known[-1]
    async with target.connection() as conn:
        cursor = await conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL AS t")
        exists = (await cursor.fetchone())["t"]
        current = None
        if exists:
            cursor = await conn.execute("SELECT version_num FROM alembic_version")
            row = await cursor.fetchone()
            current = None if row is None else str(row["version_num"])
    if current == head.revision:
        return "ok", f"at head {head.revision} ({head.description})"
    revisions = [m.revision for m in known]
    if current is not None and current not in revisions:
        return "fail", (f"the database is at revision {current}, which this tmws does not "
                        "know (migrated by a newer version?)")
    start = 0 if current is None else revisions.index(current) + 1
    pending = ", ".join(revisions[start:])
    at = "no migration applied" if current is None else f"at {current}"
    if target.embedded:
        return "warn", (f"{at}; pending {pending}: the embedded database is migrated when "
                        "tmws starts (or run `tmws db upgrade`)")
    return "fail", f"{at}; pending {pending}: run `tmws db upgrade`"


async def _embedding_config(target: _Target) -> tuple[Status, str]:
    from tmws.embeddings import provider_identity

    settings = target.settings
    async with target.connection() as conn:
        cursor = await conn.execute(
            "SELECT to_regclass('tmws_embedding_config') IS NOT NULL AS t,"
            " (SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid ="
            " to_regclass('memories') AND attname = 'embedding' AND NOT attisdropped) AS col")
        meta = await cursor.fetchone()
        if not meta["t"]:
            raise _Unavailable("tmws_embedding_config does not exist: run `tmws db upgrade`")
        cursor = await conn.execute("SELECT provider, model, dim FROM tmws_embedding_config")
        row = await cursor.fetchone()
    if row is None:
        return "fail", "tmws_embedding_config is empty: run `tmws db upgrade`"
    stored = (row["provider"], row["model"], int(row["dim"]))
    wanted = (*provider_identity(settings), settings.embedding_dim)
    if stored != wanted:
        return "fail", (f"the stored embeddings come from {stored[0]} ({stored[1]}, "
                        f"{stored[2]} dimensions) but the settings ask for {wanted[0]} "
                        f"({wanted[1]}, {wanted[2]} dimensions): the service refuses to "
                        "start; restore the settings or run `tmws memories reembed`")
    return "ok", f"{stored[0]} ({stored[1]}), {stored[2]} dimensions; column {meta['col']}"


async def _indexes(target: _Target) -> tuple[Status, str]:
    rows = await _fetch(
        target,
        "SELECT c.relname AS name, am.amname AS method, i.indisvalid AS valid,"
        " i.indisready AS ready FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
        " WHERE i.indrelid = to_regclass('memories')")
    found = {row["name"]: row for row in rows}
    wanted = {**_METHODS, "idx_memory_embedding": target.settings.vector_index}
    missing = [name for name in GUIDE_INDEXES if name not in found]
    # Any index of memories, documented or not: a failed CREATE INDEX CONCURRENTLY leaves
    # an invalid one that costs every write and serves no read.
    invalid = sorted(name for name, row in found.items() if not (row["valid"] and row["ready"]))
    problems = []
    if missing:
        problems.append(f"missing: {', '.join(missing)} (run `tmws db upgrade`; the vector "
                        "index: `tmws db reindex`)")
    if invalid:
        problems.append(f"invalid: {', '.join(invalid)} (an interrupted CREATE INDEX "
                        "CONCURRENTLY; DROP INDEX it and rebuild: `tmws db reindex` for the "
                        "vector index)")
    if problems:
        return "fail", "; ".join(problems)
    other = [f"{name} is {found[name]['method']}, expected {method}"
             for name, method in wanted.items() if found[name]["method"] != method]
    if other:
        return "warn", "; ".join(other) + (" (TMWS_VECTOR_INDEX sets the query-time knobs for "
                                           "the kind it names)")
    return "ok", f"{len(GUIDE_INDEXES)} guide indexes present and valid: {', '.join(GUIDE_INDEXES)}"


async def _vector_index(target: _Target) -> tuple[Status, str]:
    from tmws.database._reindex import ideal_lists, reindex_reason, vector_index_state

    settings = target.settings
    async with target.connection() as conn:
        cursor = await conn.execute("SELECT to_regclass('memories') IS NOT NULL AS t")
        if not (await cursor.fetchone())["t"]:
            return "fail", "the memories table does not exist: run `tmws db upgrade`"
        state = await vector_index_state(conn)
    if state.method is None:
        return "fail", "idx_memory_embedding does not exist: run `tmws db reindex`"
    if state.method != "ivfflat":
        return "ok", (f"{state.method} over {state.rows} embeddings: built incrementally, it "
                      "needs no data at build time")
    if state.rows == 0:
        return "ok", (f"ivfflat, lists {state.lists}; no embeddings stored yet. ivfflat "
                      "trains its lists on the rows present when it is built: once memories "
                      "are loaded, `tmws db reindex` (`tmws memories import` does it itself)")
    reason = reindex_reason(state, settings.vector_probes)
    built = ("built by the migration, on the then empty table" if state.built_rows is None
             else f"built on {state.built_rows} rows")
    facts = (f"ivfflat, lists {state.lists} (for {state.rows} rows: {ideal_lists(state.rows)}"
             f"), probes {settings.vector_probes}, {built}")
    if reason is not None:
        return "warn", (f"{reason}: recall suffers (an index built on an empty table has "
                        f"random centroids); run `tmws db reindex` - {facts}")
    return "ok", facts


# -- redis, patterns, token ----------------------------------------------------------------


async def _redis_standalone(settings: Settings) -> RedisStatus:
    import redis.asyncio as aioredis

    assert settings.redis_url is not None
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout,
                                     socket_connect_timeout=settings.redis_timeout)
    try:
        await client.ping()
        info = await client.info("server")
    except Exception as exc:  # redis-py's messages name host and port, never the password
        return RedisStatus("unavailable", _describe(exc))
    finally:
        await client.aclose()
    return RedisStatus("ok", version=str(info.get("redis_version", "?")))


async def _redis(target: _Target) -> tuple[Status, str]:
    if target.settings.redis_url is None:
        return "ok", "not configured, L1 only"
    assert target.redis_ping is not None
    answer = await target.redis_ping()
    if answer.state == "ok":
        return "ok", f"Redis {answer.version}" if answer.version else "answers PING"
    return "fail", f"TMWS_REDIS_URL is set but Redis is unavailable: {answer.error}"


async def _patterns(target: _Target) -> tuple[Status, str]:
    from tmws.handlers import HANDLERS, check_pattern_handler
    from tmws.patterns import default_library_path, load_pattern_file, require_patterns

    settings = target.settings
    source = settings.pattern_config or default_library_path()
    library = await asyncio.to_thread(load_pattern_file, source,
                                      limits=settings.pattern_limits)
    require_patterns(library, settings.pattern_allow_empty)
    bound = target.engine.handlers if target.engine is not None else HANDLERS
    for pattern in library.patterns:
        problem = check_pattern_handler(pattern, bound)
        if problem is not None:
            return "fail", f"{source}: pattern {pattern.name!r}: {problem}"
    target.library = library
    counts = ", ".join(f"{sum(p.pattern_type is t for p in library.patterns)} {t.value}"
                       for t in PatternType)
    detail = f"{source}: {len(library.patterns)} patterns ({counts})"
    if target.engine is not None:
        registry = target.engine.registry
        detail += (f"; running set: {len(registry)} patterns, version "
                   f"{registry.shared_version}, fingerprint {registry.fingerprint[:12]}")
    return "ok", detail


async def _token(settings: Settings) -> tuple[Status, str]:
    from tmws.auth import TokenAuthority

    if not settings.auth_enabled:
        return "ok", "authentication is off (TMWS_AUTH_ENABLED=false): no token to check"
    authority = TokenAuthority.from_settings(settings)
    token = authority.create(VERIFY_NAMESPACE, ["execute"], expires_minutes=1)
    principal = authority.authenticate(f"Bearer {token}".encode())
    if principal.namespace != VERIFY_NAMESPACE or principal.scopes != {"execute"}:
        return "fail", (f"the token came back as namespace {principal.namespace!r} with "
                        f"scopes {sorted(principal.scopes)}")
    # A copy with another signature must be refused: proves the secret is checked at all.
    head, _, signature = token.rpartition(".")
    forged = f"{head}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    try:
        authority.verify(forged)
    except AuthenticationError:
        pass
    else:
        return "fail", "a token with a forged signature was accepted"
    return "ok", (f"minted an HS256 token (namespace {VERIFY_NAMESPACE}, scope execute) and "
                  "verified it; a forged copy was refused")


# -- executions ----------------------------------------------------------------------------


async def _standalone_engine(target: _Target, stack: AsyncExitStack) -> None:
    """A small engine on the checked database: no pattern group (running instances must
    not see verification), no audit records, two connections opened on demand."""
    from tmws.database import Database
    from tmws.engine import PatternExecutionEngine

    settings = target.settings
    if target.library is None:
        raise _Unavailable("the pattern library did not load (see patterns)")
    conninfo = settings.database_url
    if conninfo is None:
        if target.connect is None:
            raise _Unavailable("the embedded database did not start (see database)")
        async with target.connection() as conn:
            conninfo = conn.info.dsn
    # Generous handler timeouts: this checks that each type works; a slow answer (a cold
    # pool, a loaded host) is reported as a warning against the configured timeout.
    small = msgspec.structs.replace(
        settings, db_max_connections=2, db_min_connections=0, db_max_overflow=0,
        db_pool_timeout=_CONNECT_TIMEOUT, audit_enabled=False,
        pattern_infra_timeout=max(settings.pattern_infra_timeout, _EXECUTE_TIMEOUT_MS),
        pattern_memory_timeout=max(settings.pattern_memory_timeout, _EXECUTE_TIMEOUT_MS),
        pattern_hybrid_timeout=max(settings.pattern_hybrid_timeout, _EXECUTE_TIMEOUT_MS))
    database = Database(conninfo, small)
    await database.open()  # no minimum: returns at once, even with the server down
    stack.push_async_callback(database.close)
    engine = PatternExecutionEngine(small, target.library, database)
    stack.push_async_callback(engine.close)
    target.engine = engine


def _probe(engine: PatternExecutionEngine, kind: PatternType
           ) -> tuple[PatternDefinition, str] | None:
    """A read-only pattern of this type and one of its example queries that routes to it."""
    from tmws.handlers import resolve_handler

    mode = ExecutionMode.BALANCED
    for pattern in engine.registry.patterns():
        if pattern.pattern_type is not kind:
            continue
        bound = engine.handlers.get(resolve_handler(pattern, kind, engine.handlers))
        if bound is None or bound.capabilities.writes_memory:
            continue  # a verification leaves nothing behind
        for query in pattern.routing_examples:
            decision = engine.router.explain(query, mode, engine.router.match(query, mode),
                                             record=False)
            if decision.pattern_name == pattern.name:
                return pattern, query
    return None


async def _execute(target: _Target, kind: PatternType) -> tuple[Status, str]:
    engine = target.engine
    if engine is None:
        raise _Unavailable(f"not checked: {target.no_engine}")
    probe = _probe(engine, kind)
    if probe is None:
        has_any = any(p.pattern_type is kind for p in engine.registry.patterns())
        if not has_any:
            return "warn", f"the pattern set has no {kind.value} pattern to execute"
        return "warn", (f"no read-only {kind.value} pattern has an example query that routes "
                        "to it (metadata.example_queries / examples)")
    pattern, query = probe
    result = await engine.execute(query, ExecutionMode.BALANCED,
                                  {"namespace": VERIFY_NAMESPACE}, use_cache=False)
    took = f"{result.execution_time_ms:.1f} ms"
    if not result.success:
        return "fail", (f"{pattern.name} ({query!r}) failed after {took}: "
                        f"{result.error_code}: {result.error}")
    if result.pattern_name != pattern.name:
        return "fail", f"{query!r} ran {result.pattern_name}, not {pattern.name}"
    if result.metadata.get("partial"):
        missing = result.result.get("missing") if isinstance(result.result, dict) else None
        return "fail", f"{pattern.name} ({query!r}) answered only partly: {missing}"
    limit = target.settings.timeout_ms(kind.value)
    if result.execution_time_ms > limit:
        return "warn", (f"{pattern.name} ({query!r}) answered in {took}, above its timeout "
                        f"({limit} ms, TMWS_PATTERN_*_TIMEOUT): the service would answer 504")
    return "ok", f"{pattern.name} ({query!r}) in {took}, {result.tokens_used} tokens"


# -- metrics -------------------------------------------------------------------------------


async def _metrics() -> tuple[Status, str]:
    from prometheus_client.parser import text_string_to_metric_families

    from tmws.metrics import exposition

    text = (await asyncio.to_thread(exposition)).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    missing = [name for name in _GUIDE_METRICS if name not in families]
    samples = sum(len(family.samples) for family in families.values())
    if missing:
        return "warn", (f"the exposition parses ({len(families)} families) but lacks "
                        f"{', '.join(missing)} (no samples yet in this process?)")
    return "ok", (f"{len(families)} metric families, {samples} samples; the guide's "
                  f"{len(_GUIDE_METRICS)} are present")


# -- command line --------------------------------------------------------------------------


_MARK: Final = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}


def format_report(report: VerificationReport) -> str:
    """A table: check, status, detail; then the verdict."""
    width = max((len(check.name) for check in report.checks), default=5)
    lines = [f"{'check':<{width}}  status  detail"]
    lines += [f"{check.name:<{width}}  {_MARK[check.status]:<6}  {check.detail}"
              for check in report.checks]
    counts = {status: sum(c.status == status for c in report.checks) for status in _EXIT}
    lines.append(f"\n{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed: "
                 f"exit {report.exit_code}")
    return "\n".join(lines)


def verify_command(*, as_json: bool, execute: bool) -> int:
    """``tmws verify``: the report on stdout, the exit code 0/1/2."""
    from tmws._logging import configure_logging

    settings, errors = load_settings()
    configure_logging(settings or Settings(), stream="stderr")
    if settings is None:
        report = VerificationReport.of([Check("settings", "fail", "; ".join(
            str(e) for e in errors) + " (nothing else could be checked)")])
    else:
        report = asyncio.run(run_verification(settings, execute=execute,
                                              settings_errors=errors))
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
    else:
        print(format_report(report))
    return report.exit_code
