"""The ``tmws`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import msgspec

from tmws._logging import configure_logging
from tmws.config import Settings
from tmws.database import (
    Database,
    EmbeddedPostgres,
    reembed,
    require_current_schema,
    upgrade,
)
from tmws.embeddings import create_provider
from tmws.errors import TmwsError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tmws", description="tmws pattern execution service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service (TMWS_API_HOST, TMWS_API_PORT, "
                        "TMWS_WORKERS)")
    db = commands.add_parser("db", help="database administration")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply pending migrations (embedded server without "
                           "TMWS_DATABASE_URL)")
    execute = commands.add_parser("execute", help="execute one query and print the result")
    execute.add_argument("query")
    execute.add_argument("--mode", default=None, help="fast, balanced or comprehensive")
    execute.add_argument("--namespace", default=None)
    memories = commands.add_parser("memories", help="bulk memory operations")
    memory_commands = memories.add_subparsers(dest="memories_command", required=True)
    memory_commands.add_parser(
        "reembed", help="recompute every embedding with the configured provider and dimension")
    patterns = commands.add_parser("patterns", help="pattern library tools")
    pattern_commands = patterns.add_subparsers(dest="patterns_command", required=True)
    check = pattern_commands.add_parser("check", help="validate a pattern file")
    check.add_argument("file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings)
        if args.command == "serve":
            from tmws.server import serve

            serve(settings)
        elif args.command == "db":
            asyncio.run(_db_upgrade(settings))
        elif args.command == "execute":
            asyncio.run(_execute(settings, args.query, args.mode, args.namespace))
        elif args.command == "memories":
            asyncio.run(_reembed(settings))
        elif args.command == "patterns":
            from tmws.patterns import load_pattern_file

            library = load_pattern_file(args.file)
            print(f"{args.file}: {len(library.patterns)} patterns OK")
    except TmwsError as exc:
        print(f"tmws: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


async def _db_upgrade(settings: Settings) -> None:
    embedded = None
    conninfo = settings.database_url
    if conninfo is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        conninfo = await asyncio.to_thread(embedded.start)
    try:
        applied = await upgrade(conninfo, settings)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    if applied:
        for migration in applied:
            print(f"applied {migration.revision}: {migration.description}")
    else:
        print("database schema is current")


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Database]:
    """The configured database, migrated (embedded) or checked current (external)."""
    embedded = None
    conninfo = settings.database_url
    if conninfo is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        conninfo = await asyncio.to_thread(embedded.start)
    try:
        if embedded is not None:
            await upgrade(conninfo, settings)
        else:
            await require_current_schema(conninfo)
        database = Database(conninfo, settings)
        await database.open()
        try:
            yield database
        finally:
            await database.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


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


async def _execute(settings: Settings, query: str, mode: str | None,
                   namespace: str | None) -> None:
    from tmws.engine import create_pattern_execution_engine

    async with await create_pattern_execution_engine(settings) as engine:
        context = {"namespace": namespace} if namespace else None
        result = await engine.execute(query, mode, context)
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")
