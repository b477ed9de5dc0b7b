"""Audit records in the database: who did what, with what outcome, when, at what token cost.

:meth:`AuditLog.record` runs on every execution (cache hits included), so it only appends a
tuple to an in-memory buffer; a background task writes the buffer to the ``audit_log``
table in batches, one binary ``COPY`` per batch, over a connection of its own (never the
request pool: under overload requests hold every pooled connection, and the audit trail
must not wait behind them).

Records are written at least once (a connection lost just as a COPY commits may write its
batch twice) and auditing never fails a request. While the database cannot be reached,
records stay buffered and are written when it is back; one warning is logged per outage,
not one per record. With a spill directory (TMWS_AUDIT_SPILL_DIR; the engine always has
one), records beyond ``capacity`` and those still unwritten at :meth:`AuditLog.close` go to
a file there instead of being lost, and the next start of any instance sharing the
directory writes them to the database (each file is claimed by renaming it, so only one
process replays it). Without one, the oldest beyond ``capacity`` are dropped and counted.
Records the server refuses (a value only it checks) are written row by row so that only
the bad ones are lost, and counted as ``rejected``.

Keep ``detail`` small and free of query text, memory content and secrets: it is stored as
is, and read when written (not copied by ``record``, so do not change it afterwards). Text
fields are stored at most 512 characters long, without NUL characters. One instance
belongs to one event loop (the engine's).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import struct
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from tmws._request_context import request_id as _request_id
from tmws.database._pool import first_line

if TYPE_CHECKING:
    from tmws.database import Database

__all__ = [
    "ACTIONS",
    "DEFAULT_CAPACITY",
    "SYSTEM_ACTOR",
    "AuditLog",
    "ConstantDetail",
    "prune_audit_log",
]

logger = logging.getLogger("tmws.audit")

# The actions tmws records; callers may record others (free text).
ACTIONS: Final = ("execute", "pattern.register", "pattern.delete", "pattern.reload",
                  "memory.store", "memory.delete", "cache.clear", "verify")
# The actor of changes nobody in particular asked for (start-up, CLI, pattern sync).
SYSTEM_ACTOR: Final = "system"

DEFAULT_CAPACITY: Final = 100_000
DEFAULT_BATCH_SIZE: Final = 1_000  # wake the writer early once this many are queued
DEFAULT_FLUSH_INTERVAL: Final = 0.5  # seconds between writes otherwise
DEFAULT_CLOSE_TIMEOUT: Final = 5.0
MAX_WRITE_BATCH: Final = 5_000  # records per COPY
MAX_TEXT: Final = 512
CONNECT_TIMEOUT: Final = 5  # seconds
# Spill files: written whole to a hidden name, then renamed (a reader never sees half a
# file); a file claimed for replay by a process that died is taken over after this long.
_SPILL_GLOB: Final = "audit-{tag}-*.jsonl"
_CLAIMED_GLOB: Final = "audit-{tag}-*.jsonl.replaying-*"
_STALE_CLAIM: Final = 600.0

_COLUMNS: Final = ("occurred_at", "request_id", "actor", "action", "target", "outcome",
                   "tokens", "duration_ms", "detail")
_COPY: Final = f"COPY audit_log ({', '.join(_COLUMNS)}) FROM STDIN WITH (FORMAT BINARY)"
_INT4_MAX: Final = 2**31 - 1

# (time.time(), request_id, actor, action, target, outcome, tokens, duration_ms, detail)
_Record = tuple[float, str | None, str, str, "str | int | None", str, int, "float | None",
                "Mapping[str, Any] | None"]

_json = msgspec.json.Encoder()
_now = time.time
_current_request_id = _request_id.get


class AuditLog:
    """A buffered writer of audit records to the ``audit_log`` table of ``database``.

    ``record()`` must be called from the event loop's thread (as every engine call is). The
    writer task starts on the first record inside a running loop (or with :meth:`start`);
    :meth:`close` writes what is left, within ``close_timeout`` seconds.
    """

    def __init__(self, database: Database, *, enabled: bool = True,
                 capacity: int = DEFAULT_CAPACITY, batch_size: int = DEFAULT_BATCH_SIZE,
                 flush_interval: float = DEFAULT_FLUSH_INTERVAL,
                 close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
                 spill_dir: str | Path | None = None) -> None:
        if capacity < 1 or batch_size < 1 or flush_interval <= 0 or close_timeout < 0:
            raise ValueError("capacity and batch_size must be at least 1, flush_interval "
                             "positive and close_timeout not negative")
        self.enabled = enabled
        self._database = database
        self._capacity = capacity
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._close_timeout = close_timeout
        self._buffer: deque[_Record] = deque()
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()  # set when batch_size records are queued
        self._lock = asyncio.Lock()  # one write at a time
        self._closed = False
        self._in_flight = 0
        self._written = self._dropped = self._rejected = 0
        self._write_errors = 0
        self._outage = False
        self._dropped_before_outage = 0
        self._warned_drops = False
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        # Files name the database they belong to: a directory shared by deployments on
        # different databases never replays one's records into another.
        self._spill_tag = _database_tag(database.conninfo)
        self._spilled = self._replayed = 0
        self._replay_pending = self._spill_dir is not None
        self._connection: psycopg.AsyncConnection[Any] | None = None

    # -- the hot path -----------------------------------------------------------------------

    def record(self, actor: str, action: str, *, target: str | int | None = None,
               outcome: str, tokens: int = 0, duration_ms: float | None = None,
               detail: Mapping[str, Any] | None = None) -> None:
        """Queue one audit record; returns at once and never raises for database trouble.

        ``actor``: the namespace or token subject (:data:`SYSTEM_ACTOR` for the service
        itself); ``action``: e.g. ``execute``, ``pattern.register``, ``memory.delete``
        (:data:`ACTIONS`); ``target``: the pattern name or memory id; ``outcome``:
        ``success``, ``failure`` or an error code. The request id is taken from the
        current request. Do not put query text, memory content or secrets in ``detail``.
        """
        if not self.enabled:
            return
        buffer = self._buffer
        size = len(buffer)
        if size >= self._capacity:
            # The writer moves the excess to disk between turns of the loop; a burst that
            # doubles the buffer before it can is spilled here, at once (a rare blocking
            # write beats a lost record). Without a spill directory the oldest is dropped.
            if self._spill_dir is None or (size >= 2 * self._capacity and not self._spill_now()):
                buffer.popleft()
                self._dropped += 1
            size = len(buffer)
        buffer.append((_now(), _current_request_id(), actor, action, target, outcome, tokens,
                       duration_ms, detail))
        if self._task is None:
            self._start()
        elif size + 1 == self._batch_size or size + 1 == self._capacity:
            self._wakeup.set()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer task now (needs a running loop); otherwise the first record
        starts it."""
        if self._task is None and self.enabled:
            self._start()

    def _start(self) -> None:
        if self._closed:  # late records after close: nobody will write them
            self._dropped += len(self._buffer)
            self._buffer.clear()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: buffer until there is one (or until flush())
        self._task = loop.create_task(self._run(), name="tmws-audit-writer")

    async def flush(self) -> bool:
        """Write everything buffered so far; True if the buffer is empty afterwards.

        Never raises for database trouble: what cannot be written stays buffered.
        """
        return await self._drain()

    async def close(self) -> None:
        """Stop the writer and write what is left, for at most ``close_timeout`` seconds;
        records still unwritten then go to the spill directory (without one: dropped and
        counted)."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        try:
            async with asyncio.timeout(self._close_timeout):
                if task is not None:
                    async with self._lock:  # a write in progress finishes first
                        task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                await self._drain()
        except TimeoutError:
            pass
        finally:
            if task is not None and not task.done():  # stuck in a write: its batch goes back
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._buffer and self._spill_dir is not None:
            count = len(self._buffer)
            if await self._spill(count):
                logger.warning("audit log closed with %d record(s) unwritten by the database "
                               "within %gs: kept in %s for the next start", count,
                               self._close_timeout, self._spill_dir)
        lost = len(self._buffer)
        if lost:
            self._dropped += lost
            self._buffer.clear()
            logger.warning("audit log closed with %d record(s) unwritten: the database could "
                           "not take them within %gs", lost, self._close_timeout)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    def stats(self) -> dict[str, Any]:
        """recorded = written + dropped (rejected included) + spilled + pending, at any
        moment; ``replayed`` counts spilled records written later (by any instance's log:
        they are in its ``written`` too, not in its ``recorded``)."""
        pending = len(self._buffer) + self._in_flight
        return {"enabled": self.enabled,
                "recorded": self._written - self._replayed + self._dropped + self._spilled
                + pending,
                "written": self._written, "dropped": self._dropped, "rejected": self._rejected,
                "write_errors": self._write_errors, "pending": pending,
                "spilled": self._spilled, "replayed": self._replayed}

    # -- the writer -------------------------------------------------------------------------

    async def _run(self) -> None:
        wakeup = self._wakeup
        while True:
            try:
                async with asyncio.timeout(self._flush_interval):
                    await wakeup.wait()
            except TimeoutError:
                pass
            wakeup.clear()
            try:
                if len(self._buffer) > self._capacity and self._spill_dir is not None:
                    await self._spill(len(self._buffer) - self._capacity)
                ok = await self._drain()
                if ok and self._replay_pending:
                    ok = await self._replay()
            except Exception:  # a bug must not end auditing for the life of the process
                logger.exception("audit log writer failed; retrying")
                ok = False
            if not ok:  # back off: no tight loop against a database that is down
                await asyncio.sleep(self._flush_interval)

    async def _drain(self) -> bool:
        async with self._lock:
            buffer = self._buffer
            # Only what is buffered now: chasing records that arrive while a batch is being
            # written would make many small COPYs instead of one per interval.
            todo = len(buffer)
            while todo > 0 and buffer:
                batch = [buffer.popleft() for _ in range(min(todo, len(buffer), MAX_WRITE_BATCH))]
                todo -= len(batch)
                self._in_flight = len(batch)
                try:
                    written = await self._write(batch)
                except BaseException as exc:
                    self._requeue(batch)
                    if not isinstance(exc, Exception):
                        raise  # cancelled (close): the batch is back in the buffer
                    self._write_errors += 1
                    self._note_outage(exc)
                    return False
                finally:
                    self._in_flight = 0
                self._written += written
                self._rejected += len(batch) - written
                self._dropped += len(batch) - written
                if self._outage:
                    self._outage = False
                    lost = self._dropped - self._dropped_before_outage
                    logger.log(logging.WARNING if lost else logging.INFO,
                               "audit log: writing to the database again; %d record(s) "
                               "dropped during the outage", lost)
            return True

    def _requeue(self, batch: Sequence[_Record]) -> None:
        buffer = self._buffer
        buffer.extendleft(reversed(batch))
        excess = len(buffer) - self._capacity
        if excess > 0:
            for _ in range(excess):
                buffer.popleft()
            self._dropped += excess

    def _note_outage(self, exc: Exception) -> None:
        if not self._outage:
            self._outage = True
            self._dropped_before_outage = self._dropped
            self._warned_drops = False
            logger.warning("audit log: cannot write to the database (%s); buffering up to %d "
                           "records until it is back", first_line(exc), self._capacity)
        elif self._dropped > self._dropped_before_outage and not self._warned_drops:
            self._warned_drops = True
            logger.warning("audit log: buffer full (%d records); dropping the oldest",
                           self._capacity)

    # -- spilling to disk and replaying -----------------------------------------------------

    async def _spill(self, count: int) -> bool:
        """Move the oldest ``count`` buffered records to a new file in the spill directory;
        False (and they stay buffered) if it cannot be written."""
        assert self._spill_dir is not None
        batch = [self._buffer.popleft() for _ in range(min(count, len(self._buffer)))]
        if not batch:
            return True
        try:
            await asyncio.to_thread(_write_spill_file, self._spill_dir, self._spill_tag, batch)
        except OSError as exc:
            self._buffer.extendleft(reversed(batch))
            logger.error("audit log: cannot spill %d record(s) to %s: %s", len(batch),
                         self._spill_dir, exc)
            return False
        self._spilled += len(batch)
        self._replay_pending = True
        return True

    def _spill_now(self) -> bool:
        assert self._spill_dir is not None
        batch = [self._buffer.popleft() for _ in range(self._capacity)]
        try:
            _write_spill_file(self._spill_dir, self._spill_tag, batch)
        except OSError as exc:
            self._buffer.extendleft(reversed(batch))
            logger.error("audit log: cannot spill %d record(s) to %s: %s", len(batch),
                         self._spill_dir, exc)
            return False
        self._spilled += len(batch)
        self._replay_pending = True
        return True

    async def _replay(self) -> bool:
        """Write every spill file no other process is replaying; True when none is left
        (or the directory cannot be read: nothing to do then)."""
        assert self._spill_dir is not None
        async with self._lock:
            try:
                claimed = await asyncio.to_thread(_claim_spill_files, self._spill_dir,
                                                  self._spill_tag)
            except OSError:
                self._replay_pending = False
                return True
            for path in claimed:
                try:
                    records = await asyncio.to_thread(_read_spill_file, path)
                    for start in range(0, len(records), MAX_WRITE_BATCH):
                        batch = records[start:start + MAX_WRITE_BATCH]
                        written = await self._write(batch)
                        self._written += written
                        self._replayed += written
                        self._rejected += len(batch) - written
                        # Written: a retry of this file must not repeat them.
                        await asyncio.to_thread(_rewrite_spill_file, path,
                                                records[start + len(batch):])
                except Exception as exc:
                    await asyncio.to_thread(_release_claims, claimed)
                    self._write_errors += 1
                    self._note_outage(exc)
                    return False
                await asyncio.to_thread(path.unlink, missing_ok=True)
                logger.info("audit log: wrote the %d record(s) kept in %s", len(records), path)
            self._replay_pending = False
            return True

    async def _write(self, batch: Sequence[_Record]) -> int:
        """Write a batch; returns how many rows went in (fewer if some cannot be stored).

        Raises when the database cannot take it now (the batch is then kept).
        """
        conn = await self._connect()
        try:
            return await self._write_on(conn, batch)
        except Exception:
            if conn.closed or conn.broken:
                self._connection = None
            raise

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = self._connection
        if conn is None or conn.closed or conn.broken:
            self._connection = None
            conn = await psycopg.AsyncConnection.connect(
                self._database.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                **self._database.connect_options)
            self._connection = conn
        return conn

    async def _write_on(self, conn: psycopg.AsyncConnection[Any], batch: Sequence[_Record]
                        ) -> int:
        rows = []
        for index, record in enumerate(batch):
            if index and not index % _ENCODE_CHUNK:
                await asyncio.sleep(0)  # let requests run: encoding takes a few µs a row
            try:
                rows.append(_encode_row(record))
            except Exception as exc:  # e.g. tokens that are not a number: lose only it
                logger.warning("audit log: unwritable %s record dropped (%s)", record[3],
                               first_line(exc))
        if not rows:
            return 0
        try:
            await _copy(conn, rows)
        except Exception as exc:
            if not _refused_data(exc):
                raise
            return await _write_row_by_row(conn, rows)
        return len(rows)


_spill_encoder = msgspec.json.Encoder()
_spill_decoder = msgspec.json.Decoder(list[Any])


def _database_tag(conninfo: str) -> str:
    """Host, port, database and user of a connection string, hashed (no password)."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        parts = {"conninfo": conninfo}
    key = "|".join(str(parts.get(k, "")) for k in ("host", "port", "dbname", "user", "conninfo"))
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


def _write_spill_file(directory: Path, tag: str, records: Sequence[_Record]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"audit-{tag}-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
    _write_lines(directory / name, records)


def _write_lines(path: Path, records: Sequence[_Record]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as sink:
        for record in records:
            sink.write(_spill_encoder.encode(list(record)) + b"\n")
        sink.flush()
        os.fsync(sink.fileno())
    os.replace(partial, path)


def _rewrite_spill_file(path: Path, remaining: Sequence[_Record]) -> None:
    if remaining:
        _write_lines(path, remaining)


def _read_spill_file(path: Path) -> list[_Record]:
    records: list[_Record] = []
    with open(path, "rb") as source:
        for line in source:
            if line.strip():
                fields = _spill_decoder.decode(line)
                records.append(tuple(fields))
    return records


def _claim_spill_files(directory: Path, tag: str) -> list[Path]:
    """Rename this database's unclaimed (and stale claimed) spill files to our claim."""
    if not directory.is_dir():
        return []
    mine = f".replaying-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    claimed: list[Path] = []
    stale = time.time() - _STALE_CLAIM
    candidates = sorted(directory.glob(_SPILL_GLOB.format(tag=tag))) + [
        p for p in sorted(directory.glob(_CLAIMED_GLOB.format(tag=tag)))
        if p.stat().st_mtime < stale]
    for path in candidates:
        original = path.name.split(".replaying-")[0]
        target = path.with_name(original + mine)
        try:
            path.rename(target)  # atomic: of several claimants, one wins
        except FileNotFoundError:
            continue
        claimed.append(target)
    return claimed


def _release_claims(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.rename(path.with_name(path.name.split(".replaying-")[0]))


async def _copy(conn: psycopg.AsyncConnection[Any], rows: Sequence[bytes]) -> None:
    async with conn.cursor() as cursor, cursor.copy(_COPY) as copy:
        await copy.write(b"".join((_SIGNATURE, *rows, _TRAILER)))


def _refused_data(exc: Exception) -> bool:
    """A problem with the rows themselves rather than with the database."""
    return isinstance(exc, psycopg.DataError | psycopg.IntegrityError)


async def _write_row_by_row(conn: psycopg.AsyncConnection[Any], rows: Sequence[bytes]) -> int:
    written = 0
    for row in rows:
        try:
            await _copy(conn, (row,))
        except Exception as exc:
            if not _refused_data(exc):
                raise
            logger.warning("audit log: the database refused a record (%s); dropped",
                           first_line(exc))
        else:
            written += 1
    return written


# Rows go to COPY in PostgreSQL's binary format, encoded here: a psycopg row per record costs
# several times more, and the writer shares the event loop with the requests.
_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
_TRAILER: Final = b"\xff\xff"
_NULL: Final = b"\xff\xff\xff\xff"
_POSTGRES_EPOCH: Final = 946_684_800  # 2000-01-01 in Unix time
_ENCODE_CHUNK: Final = 500
_POSTGRES_EPOCH_US: Final = _POSTGRES_EPOCH * 1_000_000
_pack_head = struct.Struct("!hiq").pack  # number of fields; occurred_at (length, microseconds)
_pack_int4 = struct.Struct("!ii").pack  # length, value
_pack_float4 = struct.Struct("!if").pack
_pack_length = struct.Struct("!i").pack
# Encoded text fields by value: actors, actions, outcomes and pattern names repeat.
_text_fields: dict[str, bytes] = {}
_TEXT_CACHE_SIZE: Final = 4096


def _encode_row(record: _Record) -> bytes:
    occurred, request_id, actor, action, target, outcome, tokens, duration_ms, detail = record
    return b"".join((
        _pack_head(len(_COLUMNS), 8, int(occurred * 1_000_000) - _POSTGRES_EPOCH_US),
        _NULL if request_id is None else _text_field(request_id),
        _cached_text_field(actor or "?"),
        _cached_text_field(action or "?"),
        _NULL if target is None else _cached_text_field(target),
        _cached_text_field(outcome or "?"),
        _pack_int4(4, tokens if type(tokens) is int and -_INT4_MAX <= tokens <= _INT4_MAX
                   else max(-_INT4_MAX, min(_INT4_MAX, int(tokens)))),
        _NULL if duration_ms is None else _pack_float4(4, duration_ms),
        _NULL if detail is None else _detail_field(detail),
    ))


def _cached_text_field(value: object) -> bytes:
    if type(value) is not str:
        return _text_field(value)
    field = _text_fields.get(value)
    if field is None:
        field = _text_field(value)
        if len(_text_fields) < _TEXT_CACHE_SIZE:
            _text_fields[value] = field
    return field


def _text_field(value: object) -> bytes:
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:  # PostgreSQL text cannot hold NUL
        text = text.replace("\x00", "")
    data = text[:MAX_TEXT].encode("utf-8", "replace")  # lone surrogates become '?'
    return _pack_length(len(data)) + data


class ConstantDetail(dict[str, Any]):
    """A ``detail`` used for many records: encoded once, at construction. Never mutate it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.field = _detail_field(dict(self))


def _detail_field(detail: Mapping[str, Any]) -> bytes:
    if type(detail) is ConstantDetail:
        return detail.field
    try:
        encoded = _json.encode(detail)
    except (TypeError, ValueError, OverflowError) as exc:
        encoded = _json.encode({"invalid_detail": first_line(exc)[:MAX_TEXT]})
    if b"\\u0000" in encoded:  # jsonb cannot hold NUL either
        encoded = _json.encode(_without_nul(msgspec.json.decode(encoded)))
    return _pack_length(len(encoded) + 1) + b"\x01" + encoded  # jsonb format version 1


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


async def prune_audit_log(database: Database, older_than_days: float, *,
                          batch_size: int = 10_000) -> int:
    """Delete records older than ``older_than_days``; returns how many went.

    In batches, each its own short transaction, so a large backlog never holds locks long
    or blocks the writer.
    """
    if older_than_days <= 0:
        raise ValueError(f"older_than_days must be positive (got {older_than_days})")
    total = 0
    while True:
        rows = await database.fetch(
            "WITH gone AS (DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log"
            " WHERE occurred_at < now() - make_interval(secs => %(days)s::float8 * 86400)"
            " ORDER BY occurred_at LIMIT %(batch)s) RETURNING 1) SELECT count(*) AS n FROM gone",
            {"days": older_than_days, "batch": batch_size})
        removed = int(rows[0]["n"])
        total += removed
        if removed < batch_size:
            return total
