"""Bulk import and export of memories as JSON Lines, one memory per line.

A line holds ``content`` (required) and optionally ``namespace``, ``memory_type``,
``importance``, ``tags``, ``metadata``, ``visibility`` and ``created_at`` (ISO 8601; without
an offset it is read as UTC). Export writes those fields plus ``id``; import accepts ``id``
and ignores it, because the target database assigns its own (so importing a file twice
stores its memories twice). Embeddings are never exported: they are derived data, computed
again on import by the configured provider.

Every line is checked in Python with the rules of ``MemoryStore.store`` before anything is
written; good rows go in with one ``COPY`` per batch, one transaction each. A batch the
server refuses is retried row by row under savepoints, so only the offending rows are lost.

Imports run outside the engine, so nothing bumps a running service's memory generation:
its in-process result cache keeps serving pre-import answers until entries expire
(TMWS_CACHE_TTL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec
import psycopg
from pgvector import Vector as PgVector
from psycopg.types.json import Jsonb

from tmws.database._pool import first_line
from tmws.errors import DatabaseError, InvalidRequestError
from tmws.inputs import (
    InputLimits,
    MemoryInput,
    Namespace,
    check_json_depth,
    check_metadata,
    check_namespace,
    explain,
)

if TYPE_CHECKING:
    from tmws.database._pool import Database
    from tmws.embeddings import EmbeddingProvider

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ImportLine",
    "ImportReport",
    "ImportRow",
    "Rejection",
    "export_memories",
    "import_memories",
    "parse_line",
]

DEFAULT_BATCH_SIZE: Final = 1000
_COLUMNS: Final = ("namespace", "content", "memory_type", "importance", "tags", "metadata",
                   "visibility", "embedding", "created_at")
_COPY: Final = f"COPY memories ({', '.join(_COLUMNS)}) FROM STDIN WITH (FORMAT BINARY)"
# Binary COPY carries no type information: the server reads each field as its column type.
_COPY_TYPES: Final = ["text", "text", "text", "float4", "text[]", "jsonb", "text", "vector",
                      "timestamptz"]
_INSERT: Final = (f"INSERT INTO memories ({', '.join(_COLUMNS)})"
                  f" VALUES ({', '.join(['%s'] * len(_COLUMNS))})")


@dataclass(frozen=True)
class Rejection:
    """A line that was not imported, and why."""

    line: int
    reason: str


@dataclass
class ImportReport:
    """What an import did; filled in as it goes, so it is meaningful after a failure too."""

    written: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    # Every line up to here is settled (written or rejected): resume after it.
    settled_through: int = 0


@dataclass(frozen=True)
class ImportRow:
    """One validated line, ready to write (``created_at`` None means the import time)."""

    line: int
    namespace: str
    content: str
    memory_type: str
    importance: float
    tags: list[str]
    metadata: dict[str, Any]
    visibility: str
    created_at: datetime | None

    def values(self, embedding: list[float] | None, now: datetime) -> tuple[Any, ...]:
        return (self.namespace, self.content, self.memory_type, self.importance, self.tags,
                Jsonb(self.metadata), self.visibility,
                None if embedding is None else PgVector(embedding), self.created_at or now)


class ImportLine(MemoryInput, kw_only=True, forbid_unknown_fields=True):
    """One line of an import file: a memory, and where and when it belongs."""

    namespace: Namespace | None = None
    id: int | None = None  # accepted (exports carry it) and ignored
    created_at: str | None = None


def parse_line(text: bytes | str, line: int, default_namespace: str,
               limits: InputLimits | None = None) -> ImportRow | str | None:
    """A validated row, the reason the line is rejected, or None for a blank line.

    The rules are those of every other write (:class:`tmws.inputs.MemoryInput`).
    """
    if not text.strip():
        return None
    limits = limits or InputLimits()
    data = text.encode() if isinstance(text, str) else text
    try:
        check_json_depth(data, limits.max_json_depth, "the line")
        memory = _line_decoder.decode(data)
        namespace = memory.namespace or default_namespace
        check_metadata(memory.metadata, limits)
    except msgspec.ValidationError as exc:
        return explain(exc)
    except msgspec.DecodeError as exc:
        return f"malformed JSON ({exc})"
    except InvalidRequestError as exc:
        return str(exc)
    created_at = None
    if memory.created_at is not None:
        try:
            created_at = datetime.fromisoformat(memory.created_at)
        except ValueError:
            return f"created_at is not an ISO 8601 timestamp: {memory.created_at[:40]!r}"
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
    return ImportRow(
        line=line, namespace=namespace, content=memory.content,
        memory_type=memory.memory_type, importance=memory.importance, tags=memory.tags,
        metadata=memory.metadata, visibility=memory.visibility, created_at=created_at)


_line_decoder: Final = msgspec.json.Decoder(ImportLine)


async def import_memories(database: Database, provider: EmbeddingProvider,
                          lines: Iterable[bytes | str], *, namespace: str = "default",
                          batch_size: int = DEFAULT_BATCH_SIZE, total_lines: int = 0,
                          progress: Callable[[int, int], None] | None = None,
                          report: ImportReport | None = None,
                          limits: InputLimits | None = None) -> ImportReport:
    """Validate and write JSON Lines memories in batches; see the module docstring.

    ``namespace`` is for lines without one. ``progress`` is called with (lines done,
    ``total_lines``) after each batch. Pass your own ``report`` to know what was written
    if this raises (an unreachable database or a failing embedding provider is fatal).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    check_namespace(namespace, "the default namespace")
    report = report if report is not None else ImportReport()
    batch: list[ImportRow] = []
    line = reported = 0
    async with database.connection() as conn:
        for line, text in enumerate(lines, start=1):
            if line == 1:  # drop the byte-order mark some editors add
                text = (text.removeprefix(b"\xef\xbb\xbf") if isinstance(text, bytes)
                        else text.removeprefix("\ufeff"))
            parsed = parse_line(text, line, namespace, limits)
            if isinstance(parsed, str):
                report.rejected.append(Rejection(line, parsed))
            elif parsed is not None:
                batch.append(parsed)
            if len(batch) >= batch_size:
                await _write_batch(conn, provider, batch, report)
                batch = []
                report.settled_through = line
                if progress is not None:
                    progress(line, max(total_lines, line))
                    reported = line
        if batch:
            await _write_batch(conn, provider, batch, report)
    report.settled_through = line
    report.rejected.sort(key=lambda rejection: rejection.line)
    final = max(total_lines, line)
    if progress is not None and (final == 0 or reported < final):
        progress(final, final)
    return report


async def _write_batch(conn: psycopg.AsyncConnection[Any], provider: EmbeddingProvider,
                       batch: Sequence[ImportRow], report: ImportReport) -> None:
    embeddings = await provider.embed([row.content for row in batch])
    try:
        async with conn.transaction():
            now = await _transaction_time(conn)
            async with conn.cursor() as cursor, cursor.copy(_COPY) as copy:
                copy.set_types(_COPY_TYPES)
                for row, embedding in zip(batch, embeddings, strict=True):
                    await copy.write_row(row.values(embedding, now))
    except psycopg.OperationalError as exc:
        raise _fatal(exc) from exc
    except psycopg.Error:
        # Something only the server checks (a NUL character, a constraint an operator
        # added): find the offending rows so the rest of the batch still lands.
        await _write_row_by_row(conn, batch, embeddings, report)
    else:
        report.written += len(batch)


async def _write_row_by_row(conn: psycopg.AsyncConnection[Any], batch: Sequence[ImportRow],
                            embeddings: Sequence[list[float] | None],
                            report: ImportReport) -> None:
    written = 0
    rejected: list[Rejection] = []
    try:
        async with conn.transaction():
            now = await _transaction_time(conn)
            for row, embedding in zip(batch, embeddings, strict=True):
                try:
                    async with conn.transaction():  # a savepoint: a bad row undoes only itself
                        await conn.execute(_INSERT, row.values(embedding, now))
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    rejected.append(Rejection(row.line, _server_reason(exc)))
                else:
                    written += 1
    except psycopg.OperationalError as exc:
        raise _fatal(exc) from exc
    report.written += written
    report.rejected.extend(rejected)


async def _transaction_time(conn: psycopg.AsyncConnection[Any]) -> datetime:
    """``now()``: what the column default would give rows without ``created_at``."""
    row = await (await conn.execute("SELECT now() AS now")).fetchone()
    assert row is not None
    now: datetime = row["now"]
    return now


def _server_reason(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary
    if primary is None:  # refused by the driver before it reached the server
        return f"rejected by the database driver: {first_line(exc)}"
    detail = exc.diag.message_detail
    # Short details explain (e.g. which escape); long ones echo the whole row.
    suffix = f" ({detail.rstrip('.')})" if detail and len(detail) <= 100 else ""
    return f"rejected by the database: {primary}{suffix}"


def _fatal(exc: psycopg.OperationalError) -> DatabaseError:
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return DatabaseError("statement timed out (TMWS_DB_STATEMENT_TIMEOUT)")
    return DatabaseError(f"database unavailable: {first_line(exc)}")


async def export_memories(database: Database, write: Callable[[bytes], object], *,
                          namespace: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                          progress: Callable[[int, int], None] | None = None) -> int:
    """Write memories as JSON Lines (the import format plus ``id``), ordered by id.

    Streams through a server-side cursor in one read-only snapshot, so the file is a
    consistent picture however large the table and however busy the service. Returns the
    number of memories written.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    where, params = ("WHERE namespace = %s", (namespace,)) if namespace is not None else ("", ())
    encoder = msgspec.json.Encoder()
    done = 0
    try:
        async with database.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            count = await (await conn.execute(
                f"SELECT count(*) AS n FROM memories {where}", params)).fetchone()
            total = int(count["n"]) if count else 0
            # importance::text is float4's shortest exact form: 0.7 rather than 0.699999988.
            async with conn.cursor(name="tmws_export") as cursor:
                await cursor.execute(
                    "SELECT id, namespace, content, memory_type, importance::text AS importance,"
                    " tags, metadata, visibility, created_at"
                    f" FROM memories {where} ORDER BY id", params)
                while rows := await cursor.fetchmany(batch_size):
                    write(b"".join(encoder.encode(_exported(row)) + b"\n" for row in rows))
                    done += len(rows)
                    if progress is not None:
                        progress(done, max(total, done))
    except psycopg.OperationalError as exc:
        raise _fatal(exc) from exc
    if progress is not None and done == 0:
        progress(0, 0)
    return done


def _exported(row: dict[str, Any]) -> dict[str, Any]:
    created_at: datetime = row["created_at"]
    return {"id": row["id"], "namespace": row["namespace"], "content": row["content"],
            "memory_type": row["memory_type"], "importance": float(row["importance"]),
            "tags": list(row["tags"]), "metadata": row["metadata"],
            "visibility": row["visibility"],
            "created_at": created_at.astimezone(UTC).isoformat()}
