"""The ``tmws`` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from tmws._logging import configure_logging
from tmws._version import __version__
from tmws.config import Settings
from tmws.database import (
    Database,
    ImportReport,
    check_embedding_config,
    configured_server,
    export_memories,
    format_reindex_report,
    import_memories,
    maybe_reindex,
    reembed,
    reindex,
    upgrade,
)
from tmws.embeddings import create_provider
from tmws.errors import TmwsError
from tmws.inputs import check_namespace
from tmws.models import ExecutionMode

if TYPE_CHECKING:
    from tmws.auth import Principal

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tmws", description="tmws pattern execution service")
    parser.add_argument("--version", action="version", version=f"tmws {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service (TMWS_API_HOST, TMWS_API_PORT, "
                        "TMWS_WORKERS)")
    db = commands.add_parser("db", help="database administration")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply pending migrations (embedded server without "
                           "TMWS_DATABASE_URL)")
    reindex_ = db_commands.add_parser(
        "reindex", help="rebuild the ivfflat vector index for the stored rows, concurrently, "
        "and report recall@10 before/after")
    reindex_.add_argument("--lists", type=_positive_int, default=None,
                          help="ivfflat lists (default: rows/1000, sqrt(rows) above 1M rows, "
                          "at least 10)")
    reindex_.add_argument("--sample", type=_non_negative_int, default=100,
                          help="stored embeddings to measure recall@10 with (default: 100)")
    reindex_.add_argument("--json", action="store_true", help="print the report as JSON")
    execute = commands.add_parser("execute", help="execute one query and print the result")
    execute.add_argument("query")
    execute.add_argument("--mode", default=None, choices=[m.value for m in ExecutionMode])
    execute.add_argument("--namespace", default=None)
    memories = commands.add_parser("memories", help="bulk memory operations")
    memory_commands = memories.add_subparsers(dest="memories_command", required=True)
    memory_commands.add_parser(
        "reembed", help="recompute every embedding with the configured provider and dimension")
    import_ = memory_commands.add_parser(
        "import", help="import memories from a JSON Lines file (exit 1 if lines were rejected)")
    import_.add_argument("file")
    import_.add_argument("--namespace", default="default",
                         help="for lines without a namespace (default: default)")
    import_.add_argument("--batch-size", type=_positive_int, default=1000,
                         help="memories embedded and written per transaction (default: 1000)")
    import_.add_argument("--no-reindex", action="store_true",
                         help="skip rebuilding the vector index when the import changed the "
                         "row count enough to matter (`tmws db reindex` later)")
    export = memory_commands.add_parser(
        "export", help="write memories as JSON Lines ordered by id (embeddings excluded)")
    export.add_argument("--namespace", default=None, help="only this namespace's memories")
    export.add_argument("--output", "-o", default=None, help="file to write (default: stdout)")
    cache = commands.add_parser("cache", help="result cache maintenance")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    cache_commands.add_parser(
        "clear", help="delete every cached result in Redis (TMWS_REDIS_URL), for all "
        "instances; running workers' in-process entries age out within TMWS_CACHE_LOCAL_TTL")
    audit = commands.add_parser("audit", help="audit log maintenance")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    prune = audit_commands.add_parser(
        "prune", help="delete audit records older than --older-than days (run it daily)")
    prune.add_argument("--older-than", type=_positive_float, required=True, metavar="DAYS")
    patterns = commands.add_parser("patterns", help="pattern library tools")
    pattern_commands = patterns.add_subparsers(dest="patterns_command", required=True)
    check = pattern_commands.add_parser("check", help="validate a pattern file")
    check.add_argument("file")
    evaluate = pattern_commands.add_parser(
        "eval", help="route a labelled file (PATTERN or NONE, tab, query per line) and report "
        "accuracy, precision/recall, abstentions and confusions")
    evaluate.add_argument("file")
    evaluate.add_argument("--patterns", default=None,
                          help="pattern file (default: TMWS_PATTERN_CONFIG or the shipped one)")
    evaluate.add_argument("--mode", default=None, choices=[m.value for m in ExecutionMode])
    evaluate.add_argument("--min-score", type=float, default=None,
                          help="stage-2 threshold (default: TMWS_ROUTER_MIN_SCORE)")
    evaluate.add_argument("--min-margin", type=float, default=None,
                          help="stage-2 margin (default: TMWS_ROUTER_MIN_MARGIN)")
    evaluate.add_argument("--suggest", action="store_true",
                          help="also search the thresholds that maximise accuracy on FILE "
                          "(examples scored leave-one-out)")
    evaluate.add_argument("--leave-out", action="store_true",
                          help="score queries that are examples against the other examples")
    evaluate.add_argument("--lexicon", default=None, metavar="FILE",
                          help="a lexicon file (synonyms, off_topic) extending the shipped "
                          "one (default: TMWS_ROUTER_LEXICON)")
    evaluate.add_argument("--fail-under", type=float, default=None, metavar="ACCURACY",
                          help="exit 1 if accuracy (0..1) is below this")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    examples = pattern_commands.add_parser(
        "examples", help="print a labelled file of a pattern file's example queries and the "
        "routing lexicon's off-topic queries (labelled NONE)")
    examples.add_argument("file", nargs="?", default=None)
    stats = commands.add_parser(
        "stats", help="the running service's /api/v1/stats, its database connections "
        "(pg_stat_activity) and slowest statements (pg_stat_statements), as JSON")
    stats.add_argument("--url", default=None,
                       help="the service (default: http://TMWS_API_HOST:TMWS_API_PORT)")
    stats.add_argument("--token", default=None,
                       help="bearer token with metrics:read when auth is on ('-': read stdin)")
    backup = commands.add_parser(
        "backup", help="pg_dump -Fc of the database, the pattern file and optionally a Redis "
        "snapshot into DIR/tmws-<UTC timestamp>/, with a checksummed manifest")
    backup.add_argument("--dir", default=None,
                        help="where backups go (default: TMWS_DATA_DIR/backups)")
    backup.add_argument("--keep", type=_positive_int, default=None, metavar="N",
                        help="then delete all but the N newest complete backups in --dir")
    backup.add_argument("--redis", action="store_true",
                        help="also BGSAVE Redis (TMWS_REDIS_URL, on this host) and copy its "
                        "RDB file; optional: Redis holds only cache and rate limits")
    backup.add_argument("--redis-timeout", type=_positive_float, default=120.0, metavar="S",
                        help="seconds to wait for BGSAVE to finish (default: 120)")
    restore = commands.add_parser(
        "restore", help="restore a backup into a fresh database, migrate it, clear the result "
        "cache and verify (exit status of the verification)")
    restore.add_argument("backup_dir", metavar="BACKUP_DIR")
    restore_target = restore.add_mutually_exclusive_group()
    restore_target.add_argument("--database-url", default=None, metavar="URL",
                                help="the database to restore into (default: the configured "
                                "one)")
    restore_target.add_argument("--database", default=None, metavar="NAME",
                                help="a database of that name on the configured server")
    restore.add_argument("--force", action="store_true",
                         help="replace a database that has tables: restore beside it, then "
                         "swap names (the old one is kept as NAME_pre_restore_<timestamp>); "
                         "tmws must be stopped")
    verify = commands.add_parser(
        "verify", help="check the installation: settings, database, pgvector, migrations, "
        "indexes, Redis, patterns, one execution per pattern type, token, metrics "
        "(exit 0 ok, 1 warnings, 2 failures)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--no-execute", action="store_true",
                        help="skip the executions of one pattern per type")
    initialize = commands.add_parser(
        "initialize", help="load and validate the pattern file, warm the router with its "
        "example queries and print the active patterns")
    initialize.add_argument("--patterns", default=None,
                            help="pattern file (default: TMWS_PATTERN_CONFIG or the shipped one)")
    token = commands.add_parser("token", help="API tokens (TMWS_SECRET_KEY)")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser(
        "create", help="mint a bearer token: printed alone on stdout, a summary on stderr")
    create.add_argument("--namespace", required=True, help="the namespace the token acts in")
    create.add_argument("--scopes", nargs="+", default=None, metavar="SCOPE",
                        help="comma- or space-separated (default: execute memories:read "
                        "memories:write)")
    create.add_argument("--expires", type=_positive_int, default=None, metavar="MINUTES",
                        help="lifetime in minutes (default: TMWS_TOKEN_EXPIRE_MINUTES)")
    mcp = commands.add_parser(
        "mcp", help="serve MCP (Model Context Protocol) on stdin/stdout for a local agent, "
        "as one namespace with its scopes (or as a token's)")
    who = mcp.add_mutually_exclusive_group(required=True)
    who.add_argument("--namespace", default=None, help="the namespace every tool call acts in")
    who.add_argument("--token", default=None,
                     help="act as this bearer token (TMWS_SECRET_KEY verifies it)")
    mcp.add_argument("--scopes", nargs="+", default=None, metavar="SCOPE",
                     help="with --namespace: comma- or space-separated (default: execute "
                     "memories:read memories:write; patterns:admin adds the admin tools)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "verify":  # reports refused settings as a check, with the rest
        from tmws.verify import verify_command

        return verify_command(as_json=args.json, execute=not args.no_execute)
    try:
        settings = Settings.from_env()
        # serve logs on stdout (deploy/README.md, "Logs"); other commands keep stdout for
        # their output.
        configure_logging(settings, stream="stdout" if args.command == "serve" else "stderr")
        if args.command == "serve":
            from tmws.server import serve

            serve(settings)
        elif args.command == "db" and args.db_command == "reindex":
            asyncio.run(_db_reindex(settings, args.lists, args.sample, args.json))
        elif args.command == "db":
            asyncio.run(_db_upgrade(settings))
        elif args.command == "stats":
            from tmws._service_stats import gather_stats

            token = sys.stdin.readline().strip() if args.token == "-" else args.token
            report = gather_stats(settings, args.url, token)
            print(msgspec.json.format(msgspec.json.encode(report)).decode())
        elif args.command == "execute":
            asyncio.run(_execute(settings, args.query, args.mode, args.namespace))
        elif args.command == "memories":
            if args.memories_command == "import":
                return asyncio.run(_import(settings, args.file, args.namespace, args.batch_size,
                                           reindex_after=not args.no_reindex))
            if args.memories_command == "export":
                asyncio.run(_export(settings, args.namespace, args.output))
            else:
                asyncio.run(_reembed(settings))
        elif args.command == "patterns":
            return _patterns(settings, args)
        elif args.command == "cache":
            asyncio.run(_cache_clear(settings))
        elif args.command == "audit":
            asyncio.run(_audit_prune(settings, args.older_than))
        elif args.command == "initialize":
            from tmws.initialize import format_initialize, initialize_patterns

            print(format_initialize(asyncio.run(initialize_patterns(settings, args.patterns))))
        elif args.command == "token":
            _token_create(settings, args.namespace, args.scopes, args.expires)
        elif args.command == "mcp":
            from tmws.mcp.stdio import serve_stdio

            asyncio.run(serve_stdio(settings, _mcp_principal(settings, args)))
        elif args.command == "backup":
            from tmws.backup import backup_command

            return asyncio.run(backup_command(settings, args.dir, args.keep, args.redis,
                                              args.redis_timeout))
        elif args.command == "restore":
            from tmws.backup import restore_command

            return asyncio.run(restore_command(settings, args.backup_dir, args.database_url,
                                               args.database, args.force))
    except TmwsError as exc:
        print(f"tmws: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _mcp_principal(settings: Settings, args: argparse.Namespace) -> Principal:
    from tmws.auth import DEFAULT_SCOPES, Principal, TokenAuthority, parse_scopes

    if args.token is not None:
        if args.scopes is not None:
            raise TmwsError("--scopes goes with --namespace; a token carries its own")
        return TokenAuthority.from_settings(settings).verify(args.token.strip())
    namespace = check_namespace(args.namespace, "--namespace")
    try:
        scopes = parse_scopes(" ".join(args.scopes)) if args.scopes else DEFAULT_SCOPES
    except ValueError as exc:
        raise TmwsError(f"--scopes: {exc}") from None
    if not scopes:
        raise TmwsError("--scopes: at least one scope is required")
    return Principal(namespace, frozenset(scopes))


def _stderr_line(message: str) -> None:
    print(message, file=sys.stderr)


async def _db_reindex(settings: Settings, lists: int | None, sample: int, as_json: bool
                      ) -> None:
    async with configured_server(settings) as server:
        report = await reindex(server.conninfo, settings, lists=lists, sample=sample,
                               log=_stderr_line)
    print(msgspec.json.encode(report).decode() if as_json else format_reindex_report(report))


async def _db_upgrade(settings: Settings) -> None:
    async with configured_server(settings, prepare="none") as server:
        applied = await upgrade(server.conninfo, settings, wait=settings.startup_wait)
    if applied:
        for migration in applied:
            print(f"applied {migration.revision}: {migration.description}")
    else:
        print("database schema is current")


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Database]:
    """The configured database, migrated (embedded) or checked current (external)."""
    async with configured_server(settings) as server:
        database = Database(server.conninfo, settings, role="cli")
        await database.open()
        try:
            yield database
        finally:
            await database.close()


def _progress(label: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        bar = "#" * (percent // 4)
        sys.stderr.write(f"\r{label} [{bar:<25}] {done}/{total} ({percent}%)")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return report


async def _reembed(settings: Settings) -> None:
    provider = create_provider(settings)
    try:
        async with _database(settings) as database:
            count = await reembed(database, settings, provider, progress=_progress("reembed"))
    finally:
        await provider.aclose()
    print(f"re-embedded {count} memories with {provider.name} ({provider.model}, "
          f"{provider.dim} dimensions)")


def _patterns(settings: Settings, args: argparse.Namespace) -> int:
    from tmws import evaluation
    from tmws._example_vectors import example_vectors_for
    from tmws.embeddings import create_provider
    from tmws.lexicon import RoutingLexicon
    from tmws.models import ExecutionMode
    from tmws.patterns import default_library_path, load_pattern_file
    from tmws.registry import PatternRegistry
    from tmws.router import HybridRouter

    if args.patterns_command == "check":
        library = load_pattern_file(args.file)
        print(f"{args.file}: {len(library.patterns)} patterns OK")
        return 0
    default = settings.pattern_config or default_library_path()
    if args.patterns_command == "examples":
        library = load_pattern_file(args.file or default)
        # The router's off-topic examples too: leave-one-out scores each against the rest.
        off_topic = dict.fromkeys((*library.off_topic_examples,
                                   *RoutingLexicon.shipped(settings.router_lexicon).off_topic))
        sys.stdout.write(evaluation.examples_tsv(library.patterns, list(off_topic)))
        return 0
    library = load_pattern_file(args.patterns or default)
    labelled = evaluation.read_labelled(args.file, (p.name for p in library.patterns))
    lexicon = RoutingLexicon.shipped(args.lexicon or settings.router_lexicon)
    registry = PatternRegistry(library.patterns, lexicon=lexicon)
    provider = create_provider(settings)
    router = HybridRouter(registry, min_score=settings.router_min_score,
                          min_margin=settings.router_min_margin,
                          vectors=example_vectors_for(settings, registry, provider))

    async def embed() -> dict[str, list[float] | None] | None:
        try:
            return await router.embed_queries([item.query for item in labelled])
        finally:
            await provider.aclose()

    vectors = asyncio.run(embed())
    mode = ExecutionMode(args.mode or settings.pattern_default_mode)
    report = evaluation.evaluate(router, labelled, mode=mode, min_score=args.min_score,
                                 min_margin=args.min_margin, leave_out=args.leave_out,
                                 vectors=vectors)
    suggestion = evaluation.suggest_thresholds(router, labelled, mode=mode, vectors=vectors) \
        if args.suggest else None
    if args.json:
        print(msgspec.json.encode({"evaluation": report, "suggestion": suggestion}).decode())
    else:
        print(evaluation.format_report(report, suggestion))
    if args.fail_under is not None and report.accuracy < args.fail_under:
        print(f"tmws: accuracy {report.accuracy:.1%} is below {args.fail_under:.1%}",
              file=sys.stderr)
        return 1
    return 0


async def _cache_clear(settings: Settings) -> None:
    from tmws.cache import CacheManager
    from tmws.errors import RedisUnavailable

    if settings.redis_url is None:
        raise TmwsError("TMWS_REDIS_URL is not set: results are cached in each worker's "
                        "memory only; restart the service (or POST /api/v1/cache/clear to "
                        "the worker) to drop them")
    cache = CacheManager(redis_url=settings.redis_url, redis_timeout=settings.redis_timeout)
    try:
        deleted = await cache.clear()
    except RedisUnavailable as exc:
        # Audited as the engine's clear_cache audits it: the attempt is a change request.
        await _audit(settings, "cache.clear", outcome="redis_unavailable")
        raise TmwsError(f"Redis (TMWS_REDIS_URL) is unreachable: {exc.__cause__ or exc}"
                        ) from None
    finally:
        await cache.close()
    await _audit(settings, "cache.clear", outcome="success", detail={"deleted": deleted})
    print(f"deleted {deleted} cached results from Redis; running workers' in-process "
          f"entries age out within {settings.cache_local_ttl:g} s (TMWS_CACHE_LOCAL_TTL)")


async def _audit(settings: Settings, action: str, *, outcome: str,
                 detail: dict[str, Any] | None = None) -> None:
    """One audit record of a change made from the command line, as the service records
    its own (actor ``system``). A database that cannot take it within the audit log's close
    timeout leaves it in TMWS_AUDIT_SPILL_DIR, written by the next start."""
    from tmws.audit import SYSTEM_ACTOR, AuditLog

    if not settings.audit_enabled:
        return
    async with configured_server(settings, prepare="none") as server:
        audit = AuditLog(Database(server.conninfo, settings, role="cli"),
                         spill_dir=settings.audit_spill_path)
        audit.record(SYSTEM_ACTOR, action, outcome=outcome, detail=detail)
        await audit.close()


async def _audit_prune(settings: Settings, days: float) -> None:
    from tmws.audit import prune_audit_log

    async with _database(settings) as database:
        removed = await prune_audit_log(database, days)
    print(f"deleted {removed} audit records older than {days:g} days")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive (got {text})")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {value})")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


# Rejections listed in the import summary; the rest are counted.
_SHOWN_REJECTIONS = 50


async def _import(settings: Settings, file: str, namespace: str, batch_size: int, *,
                  reindex_after: bool = True) -> int:
    """Exit status 0 if every line was written, 1 if some were rejected."""
    check_namespace(namespace, "--namespace")
    try:
        with open(file, "rb") as counting:  # a first pass, for the progress bar's total
            total = sum(1 for _ in counting)
    except OSError as exc:
        raise TmwsError(f"cannot read {file}: {exc.strerror or exc}") from None

    def lines() -> Iterator[bytes]:
        try:
            with open(file, "rb") as source:
                yield from source
        except OSError as exc:
            raise TmwsError(f"cannot read {file}: {exc.strerror or exc}") from None

    report = ImportReport()
    provider = create_provider(settings)
    try:
        async with _database(settings) as database:
            await check_embedding_config(database, settings)
            await import_memories(database, provider, lines(), namespace=namespace,
                                  batch_size=batch_size, total_lines=total,
                                  progress=_progress("import"), report=report,
                                  limits=settings.input_limits)
            if reindex_after and report.written:
                rebuilt = await maybe_reindex(database.conninfo, settings, log=_stderr_line)
                if rebuilt is not None:
                    print(format_reindex_report(rebuilt))
    except BaseException:
        if report.written:
            sys.stderr.write(f"\n{report.written} memories were written before the error; "
                             f"lines 1-{report.settled_through} are settled\n")
        raise
    finally:
        await provider.aclose()
    print(f"imported {report.written} memories, rejected {len(report.rejected)} lines")
    for rejection in report.rejected[:_SHOWN_REJECTIONS]:
        print(f"line {rejection.line}: {rejection.reason}")
    if len(report.rejected) > _SHOWN_REJECTIONS:
        print(f"... and {len(report.rejected) - _SHOWN_REJECTIONS} more rejected lines")
    return 1 if report.rejected else 0


async def _export(settings: Settings, namespace: str | None, output: str | None) -> None:
    """To a file, atomically: a failed export leaves no partial file behind."""
    async with _database(settings) as database:
        if output is None:
            try:
                count = await export_memories(database, sys.stdout.buffer.write,
                                              namespace=namespace, progress=_progress("export"))
                sys.stdout.flush()
            except BrokenPipeError:  # `| head`: the reader is gone; spare it a traceback
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise TmwsError("the output was closed before the export finished") from None
            print(f"exported {count} memories", file=sys.stderr)
            return
        directory = os.path.dirname(os.path.abspath(output))
        try:
            handle, partial = tempfile.mkstemp(prefix=".tmws-export-", dir=directory)
        except OSError as exc:
            raise TmwsError(f"cannot write {output}: {exc.strerror or exc}") from None
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(handle, 0o666 & ~umask)  # as `> FILE` would make it, not mkstemp's 0600
            with os.fdopen(handle, "wb") as sink:
                count = await export_memories(database, sink.write, namespace=namespace,
                                              progress=_progress("export"))
            os.replace(partial, output)
        except OSError as exc:
            os.unlink(partial)
            raise TmwsError(f"cannot write {output}: {exc.strerror or exc}") from None
        except BaseException:
            os.unlink(partial)
            raise
    print(f"exported {count} memories to {output}")


def _token_create(settings: Settings, namespace: str, scopes: Sequence[str] | None,
                  expires: int | None) -> None:
    """The token alone on stdout (for `TOKEN=$(tmws token create ...)`); never the secret."""
    from tmws.auth import DEFAULT_SCOPES, SCOPES, TokenAuthority, parse_scopes

    authority = TokenAuthority.from_settings(settings)
    try:
        granted = DEFAULT_SCOPES if scopes is None else parse_scopes(" ".join(scopes))
        token = authority.create(namespace, granted, expires_minutes=expires)
    except ValueError as exc:
        raise TmwsError(str(exc)) from None
    principal = authority.verify(token)  # also proves the token round-trips
    expiry = datetime.fromtimestamp(principal.expires_at or 0, UTC).isoformat(timespec="seconds")
    print(token)
    shown = " ".join(scope for scope in SCOPES if scope in principal.scopes)
    print(f"token for namespace {principal.namespace}: scopes {shown}; expires {expiry}",
          file=sys.stderr)


async def _execute(settings: Settings, query: str, mode: str | None,
                   namespace: str | None) -> None:
    from tmws.engine import create_pattern_execution_engine

    async with await create_pattern_execution_engine(settings) as engine:
        context = {"namespace": namespace} if namespace else None
        result = await engine.execute(query, mode, context)
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")
