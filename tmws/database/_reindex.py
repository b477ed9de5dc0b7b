"""Rebuilding the vector index on the data it serves (``tmws db reindex``).

The migration builds ``idx_memory_embedding`` on an empty table: an ivfflat index then has
centroids that describe no data (pgvector warns "ivfflat index created with little data")
and ``TMWS_VECTOR_LISTS`` lists whatever the table grows to, so recall drops. This module
rebuilds it with ``lists`` chosen from the row count, concurrently (the service keeps
serving), and measures recall@10 against exact search before and after.

The rebuilt index keeps the migration's name and definition except ``lists``, so Alembic
and later migrations see the same schema. A comment on the index records how many rows it
was built on: :func:`vector_index_state` reads it back (``built_rows``), so a later import
can tell whether the index still fits the table.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from tmws.config import Settings
from tmws.database._pool import first_line
from tmws.database._pooler import connect_options, session_conninfo
from tmws.database._vectors import INDEX_NAME, create_index_sql, search_settings_sql
from tmws.errors import DatabaseError

__all__ = [
    "AUTO_MIN_ROWS",
    "MAX_LISTS",
    "MIN_LISTS",
    "OLD_NAME",
    "TEMP_NAME",
    "IndexState",
    "ReindexReport",
    "format_reindex_report",
    "ideal_lists",
    "maybe_reindex",
    "measure_recall",
    "reindex",
    "reindex_reason",
    "vector_index_state",
]

# A floor: below it the per-list scan is trivial anyway, and with the default probes (10)
# a small table is searched exactly.
MIN_LISTS: Final = 10
MAX_LISTS: Final = 32768  # pgvector's limit
# pgvector's guidance: rows / 1000 up to a million rows, sqrt(rows) above.
_SQRT_ABOVE: Final = 1_000_000
# An index whose lists (or whose build-time row count) is off by more than this factor
# from what the table needs is rebuilt after an import.
FAR_FACTOR: Final = 2.0
# Names beside the live index while a rebuild runs; a leftover of either (a rebuild that
# was interrupted) is dropped by the next one.
TEMP_NAME: Final = f"{INDEX_NAME}_reindex"
OLD_NAME: Final = f"{INDEX_NAME}_old"
_K: Final = 10
# Below this many rows an automatic rebuild (after an import) is not worth its noise: a
# scan of so few vectors is cheap and `tmws db reindex` remains at hand.
AUTO_MIN_ROWS: Final = 1000
_BUILT_ON: Final = re.compile(r"built on (\d+) rows")
_LISTS: Final = re.compile(r"lists\s*=\s*'?(\d+)'?")
_OPERATORS: Final = {"vector_cosine_ops": "<=>", "vector_l2_ops": "<->", "vector_ip_ops": "<#>",
                     "vector_l1_ops": "<+>"}
# How long the rename of old and new index may wait for its lock before retrying.
_SWAP_LOCK_TIMEOUT: Final = "5s"
_SWAP_ATTEMPTS: Final = 12


def ideal_lists(rows: int) -> int:
    """ivfflat lists for ``rows`` indexed vectors (pgvector: rows/1000 up to 1M rows,
    sqrt(rows) above), between :data:`MIN_LISTS` and :data:`MAX_LISTS`."""
    wanted = rows // 1000 if rows <= _SQRT_ABOVE else math.isqrt(rows)
    return max(MIN_LISTS, min(MAX_LISTS, wanted))


class IndexState(msgspec.Struct, kw_only=True):
    """The live vector index as the catalog describes it (``method`` None: no index)."""

    rows: int  # rows with an embedding (the ones an ivfflat index holds)
    method: str | None = None  # ivfflat | hnsw
    valid: bool = True
    definition: str | None = None
    lists: int | None = None
    built_rows: int | None = None  # from the index's comment; None: not built by reindex
    leftovers: list[str] = msgspec.field(default_factory=list)


def reindex_reason(state: IndexState, probes: int) -> str | None:
    """Why the index should be rebuilt for the rows it now serves, or None."""
    if state.leftovers:
        return f"{', '.join(state.leftovers)} left over from an interrupted reindex"
    if state.method != "ivfflat" or state.rows == 0:
        return None  # HNSW grows with the data; nothing to build an ivfflat index from
    if state.lists is None:
        return None
    if not state.valid:
        return "the index is invalid (an interrupted concurrent build)"
    ideal = ideal_lists(state.rows)
    if state.lists > FAR_FACTOR * ideal or state.lists * FAR_FACTOR < ideal:
        return (f"lists {state.lists} is far from {ideal}, the value for "
                f"{state.rows} rows")
    if state.lists <= probes:
        return None  # every list is searched: exact, whatever the centroids
    if state.built_rows is None:
        return "the index was not built on this data (the migration builds it empty)"
    if state.rows > FAR_FACTOR * max(1, state.built_rows):
        return f"the table grew from {state.built_rows} to {state.rows} rows since the build"
    return None


class ReindexReport(msgspec.Struct, kw_only=True):
    index: str
    method: str | None
    rows: int
    action: str  # rebuilt | created | nothing to do
    reason: str
    lists_before: int | None = None
    lists_after: int | None = None
    recall_before: float | None = None  # recall@10 of the index against exact search
    recall_after: float | None = None
    sample: int = 0  # queries the recall was measured with
    search: str = ""  # the query-time settings used (the service's)
    cleaned: list[str] = msgspec.field(default_factory=list)  # leftovers dropped
    seconds: float = 0.0


async def vector_index_state(conn: psycopg.AsyncConnection[Any]) -> IndexState:
    """Read the vector index on memories (and any leftover of an interrupted rebuild)."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute("SELECT count(embedding) AS n FROM memories")
    count = await cursor.fetchone()
    state = IndexState(rows=int(count["n"]) if count else 0)
    await cursor.execute(
        "SELECT c.relname, am.amname, i.indisvalid, pg_get_indexdef(c.oid) AS definition,"
        "       obj_description(c.oid, 'pg_class') AS comment"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_am am ON am.oid = c.relam"
        " WHERE i.indrelid = 'memories'::regclass AND c.relname = ANY(%s)",
        ([INDEX_NAME, TEMP_NAME, OLD_NAME],))
    for row in await cursor.fetchall():
        if row["relname"] != INDEX_NAME:
            state.leftovers.append(row["relname"])
            continue
        state.method = row["amname"]
        state.valid = bool(row["indisvalid"])
        state.definition = row["definition"]
        if state.method == "ivfflat":
            found = _LISTS.search(row["definition"])
            state.lists = int(found.group(1)) if found else 100  # pgvector's default
        built = _BUILT_ON.search(row["comment"] or "")
        state.built_rows = int(built.group(1)) if built else None
    state.leftovers.sort()
    return state


def _operator(definition: str) -> str:
    for opclass, operator in _OPERATORS.items():
        if opclass in definition:
            return operator
    raise DatabaseError(f"{INDEX_NAME} uses an operator class tmws does not know: "
                        f"{definition}")


def _with_lists(definition: str, lists: int, name: str) -> str:
    """The live definition, built concurrently under ``name`` with ``lists``."""
    head = re.match(r"CREATE INDEX (\S+) ON ", definition)
    if head is None:
        raise DatabaseError(f"unexpected definition of {INDEX_NAME}: {definition}")
    body = definition[head.end():]
    if _LISTS.search(body):
        body = _LISTS.sub(f"lists='{int(lists)}'", body, count=1)
    else:  # pgvector's default lists, no WITH clause: add one before any predicate
        before, where, after = body.partition(" WHERE ")
        body = f"{before} WITH (lists='{int(lists)}'){where}{after}"
    return f"CREATE INDEX CONCURRENTLY {name} ON {body}"


async def _sample(conn: psycopg.AsyncConnection[Any], rows: int, size: int
                  ) -> list[tuple[int, str]]:
    """Up to ``size`` stored embeddings, spread over the table (the same ones every time)."""
    if size <= 0 or rows == 0:
        return []
    percent = min(100.0, 100.0 * 3 * size / rows)
    cursor = await conn.execute(
        "SELECT id, embedding::text FROM memories TABLESAMPLE BERNOULLI (%s) REPEATABLE (14)"
        " WHERE embedding IS NOT NULL LIMIT %s", (percent, size))
    return [(int(row[0]), str(row[1])) for row in await cursor.fetchall()]


async def _neighbours(conn: psycopg.AsyncConnection[Any], operator: str,
                      queries: Sequence[tuple[int, str]], setup: str) -> list[set[int]]:
    """The 10 nearest other memories of each query, with ``setup`` in force (in a
    transaction rolled back afterwards, so the session's settings are untouched)."""
    query = sql.SQL("SELECT id FROM memories WHERE embedding IS NOT NULL AND id <> %s"
                    " ORDER BY embedding {} %s::vector LIMIT {}").format(
        sql.SQL(operator), sql.Literal(_K))
    found: list[set[int]] = []
    async with conn.transaction(force_rollback=True):
        await conn.execute(sql.SQL(setup))
        for memory_id, vector in queries:
            cursor = await conn.execute(query, (memory_id, vector))
            found.append({int(row[0]) for row in await cursor.fetchall()})
    return found


async def _exact(conn: psycopg.AsyncConnection[Any], operator: str,
                 queries: Sequence[tuple[int, str]]) -> list[set[int]]:
    # Ground truth: a sequential scan, every distance computed.
    return await _neighbours(conn, operator, queries,
                             "SET LOCAL enable_indexscan = off;"
                             " SET LOCAL enable_bitmapscan = off")


async def measure_recall(conn: psycopg.AsyncConnection[Any], settings: Settings,
                         operator: str, queries: Sequence[tuple[int, str]],
                         exact: Sequence[set[int]]) -> float | None:
    """recall@10 of the index, searched as the service searches (its probes / ef_search),
    against ``exact``; None without queries."""
    if not queries:
        return None
    version = await (await conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'vector'")).fetchone()
    from tmws.database._vectors import parse_version

    setup = ("SET LOCAL enable_seqscan = off; "
             + search_settings_sql(settings, parse_version(version[0] if version else None)))
    answers = await _neighbours(conn, operator, queries, setup)
    hits = sum(len(got & want) for got, want in zip(answers, exact, strict=True))
    wanted = sum(len(want) for want in exact)
    return round(hits / wanted, 4) if wanted else None


async def _drop_concurrently(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    await conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
        sql.Identifier(name)))


async def _swap(conn: psycopg.AsyncConnection[Any]) -> None:
    """Old index out, new one in under the live name, atomically; the renames wait a
    little for their lock and retry, never queueing long in front of the service."""
    for attempt in range(_SWAP_ATTEMPTS):
        try:
            async with conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(_SWAP_LOCK_TIMEOUT)))
                await conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(INDEX_NAME), sql.Identifier(OLD_NAME)))
                await conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    sql.Identifier(TEMP_NAME), sql.Identifier(INDEX_NAME)))
            return
        except psycopg.errors.LockNotAvailable:
            if attempt == _SWAP_ATTEMPTS - 1:
                raise DatabaseError(
                    f"could not rename the rebuilt index into place: {INDEX_NAME} stayed "
                    f"locked; the new index is left as {TEMP_NAME} (the next "
                    "`tmws db reindex` drops it and starts again)") from None


async def reindex(conninfo: str, settings: Settings, *, lists: int | None = None,
                  sample: int = 100, reason: str | None = None,
                  log: Callable[[str], None] | None = None) -> ReindexReport:
    """Rebuild the ivfflat vector index with ``lists`` (default: :func:`ideal_lists` of the
    row count) without blocking reads or writes; measure recall@10 on ``sample`` stored
    embeddings before and after. An HNSW index is measured only (nothing to rebuild).

    Holds the migration lock, so it never races ``tmws db upgrade``, a re-embed or another
    reindex; on a session of its own, which behind a transaction pooler means
    TMWS_DATABASE_DIRECT_URL (a concurrent build cannot run inside a transaction either).
    """
    from tmws.database._migrate import ADVISORY_LOCK_KEY

    if lists is not None and not 1 <= lists <= MAX_LISTS:
        raise DatabaseError(f"--lists must be between 1 and {MAX_LISTS} (got {lists})")
    conninfo = session_conninfo(conninfo, settings, "tmws db reindex")
    say = log or (lambda _message: None)
    started = time.monotonic()
    try:
        conn = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, application_name="tmws/reindex")
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {first_line(exc)}") from None
    async with conn:
        # An index build may take far longer than a service statement may.
        await conn.execute("SET statement_timeout = 0")
        await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            report = await _reindex(conn, settings, lists, sample, reason, say)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    report.seconds = round(time.monotonic() - started, 3)
    return report


async def _reindex(conn: psycopg.AsyncConnection[Any], settings: Settings, lists: int | None,
                   sample: int, reason: str | None, say: Callable[[str], None]
                   ) -> ReindexReport:
    state = await vector_index_state(conn)
    report = ReindexReport(index=INDEX_NAME, method=state.method, rows=state.rows,
                           action="nothing to do", reason="",
                           search=search_settings_sql(settings).removeprefix("SET "),
                           lists_before=state.lists)
    for leftover in state.leftovers:
        say(f"dropping {leftover}, left over from an interrupted reindex")
        await _drop_concurrently(conn, leftover)
        report.cleaned.append(leftover)
    definition = state.definition or create_index_sql(settings)
    method = state.method or settings.vector_index
    operator = _operator(definition)
    queries = await _sample(conn, state.rows, sample)
    exact = await _exact(conn, operator, queries) if queries else []
    report.sample = len(queries)
    if state.method is not None and state.valid:
        report.recall_before = await measure_recall(conn, settings, operator, queries, exact)
    if method != "ivfflat":
        report.reason = (f"{method} builds its graph as rows arrive: rebuilding it would not "
                         "improve recall (raise TMWS_HNSW_EF_SEARCH for that)")
        report.lists_after = None
        return report
    if state.rows == 0:
        report.reason = ("no memory has an embedding yet: an index built now would be as "
                         "empty as the migration's; import memories first")
        return report
    target = lists or ideal_lists(state.rows)
    say(f"building {INDEX_NAME} with lists = {target} on {state.rows} rows (concurrently)")
    build = _with_lists(definition, target, sql.Identifier(
        TEMP_NAME if state.method is not None else INDEX_NAME).as_string(conn))
    try:
        await conn.execute(sql.SQL(build))  # catalog text, names quoted
    except psycopg.Error as exc:
        # A failed concurrent build leaves an invalid index behind: drop it now.
        if state.method is not None:
            await _drop_concurrently(conn, TEMP_NAME)
        raise DatabaseError(f"building the vector index failed: {first_line(exc)}") from None
    built = TEMP_NAME if state.method is not None else INDEX_NAME
    await conn.execute(sql.SQL("COMMENT ON INDEX {} IS {}").format(
        sql.Identifier(built), sql.Literal(
            f"tmws reindex: built on {state.rows} rows, lists {target}")))
    if state.method is not None:
        await _swap(conn)
        say("swapped the new index in; dropping the old one (concurrently)")
        await _drop_concurrently(conn, OLD_NAME)
        report.action = "rebuilt"
    else:
        report.action = "created"
    await conn.execute("ANALYZE memories")
    report.lists_after = target
    report.recall_after = await measure_recall(conn, settings, operator, queries, exact)
    report.reason = reason or (f"--lists {lists}" if lists else
                               f"lists {target} for {state.rows} rows")
    return report


async def maybe_reindex(conninfo: str, settings: Settings, *, sample: int = 100,
                        min_rows: int = AUTO_MIN_ROWS,
                        log: Callable[[str], None] | None = None) -> ReindexReport | None:
    """Reindex if the table (of at least ``min_rows`` embedded rows) no longer fits its
    index (:func:`reindex_reason`), e.g. after an import; None when it still does."""
    try:
        async with await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, **connect_options(settings)) as conn:
            state = await vector_index_state(conn)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {first_line(exc)}") from None
    why = reindex_reason(state, settings.vector_probes)
    if why is None or (state.rows < min_rows and not state.leftovers):
        return None
    return await reindex(conninfo, settings, sample=sample, reason=why, log=log)


def _number(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_reindex_report(report: ReindexReport) -> str:
    """A short table for the terminal."""
    lines = [f"{report.index}: {report.method or 'missing'}, {report.rows} rows with an "
             f"embedding: {report.action} ({report.reason}; {report.seconds:.1f} s)"]
    if report.cleaned:
        lines.append(f"dropped leftovers of an interrupted reindex: {', '.join(report.cleaned)}")
    lines.append(f"{'':8}{'lists':>8}{'recall@10':>11}")
    lines.append(f"{'before':8}{_number(report.lists_before):>8}"
                 f"{_number(report.recall_before):>11}")
    if report.action != "nothing to do":
        lines.append(f"{'after':8}{_number(report.lists_after):>8}"
                     f"{_number(report.recall_after):>11}")
    lines.append(f"recall@10: the index searched with {report.search} against exact search, "
                 f"{report.sample} stored embeddings as queries")
    return "\n".join(lines)
