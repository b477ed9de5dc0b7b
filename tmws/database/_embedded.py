"""The embedded default database: PostgreSQL 16 with pgvector, bundled by ``pgserver``."""

from __future__ import annotations

import logging
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
                import pgserver

                # pgserver logs every initdb/pg_ctl command line at INFO.
                logging.getLogger("pgserver").setLevel(logging.WARNING)

                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._server = pgserver.get_server(  # type: ignore[attr-defined]
                    self.pgdata, cleanup_mode="stop")
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

    def stop(self) -> None:
        """Release this process's handle; the last one stops the server."""
        if self._server is not None:
            server, self._server = self._server, None
            server.cleanup()

