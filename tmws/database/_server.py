"""Which PostgreSQL tmws talks to: TMWS_DATABASE_URL, or the embedded server started for it.

Written once here for every way in — the engine, ``tmws serve``, and the CLI's database,
backup and verify commands — with what each needs done to the schema first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from tmws.config import Settings
from tmws.database._embedded import EmbeddedPostgres
from tmws.database._migrate import require_current_schema, upgrade

__all__ = ["DatabaseServer", "Prepare", "configured_server", "open_server"]

Prepare = Literal["check", "migrate-embedded", "none"]
"""What :func:`open_server` does to the schema before answering:

- ``check``: migrate the embedded server; an external one must be current already (an
  operator runs ``tmws db upgrade``), waiting up to TMWS_STARTUP_WAIT for it;
- ``migrate-embedded``: migrate the embedded server only (``tmws serve``: every worker's
  engine checks an external one itself);
- ``none``: leave it alone (``tmws db upgrade`` migrates it itself; backup, restore and
  verify read or judge it as it is).
"""


@dataclass(frozen=True)
class DatabaseServer:
    """An opened database server: where to connect and, if tmws started it, the handle."""

    conninfo: str = field(repr=False)  # may hold a password: never in a repr or a log
    embedded: EmbeddedPostgres | None = None

    async def stop(self) -> None:
        """Stop the embedded server if this process started it (this process's handle: the
        server keeps running while another process holds one); nothing for an external one."""
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


async def open_server(settings: Settings, *, prepare: Prepare = "check") -> DatabaseServer:
    """TMWS_DATABASE_URL, or the embedded server in TMWS_DATA_DIR started (or joined), with
    the schema prepared as ``prepare`` says. The caller stops it (:meth:`DatabaseServer.stop`);
    on failure nothing is left running."""
    if settings.database_url is not None:
        server = DatabaseServer(settings.database_url)
        if prepare == "check":
            await require_current_schema(server.conninfo, wait=settings.startup_wait)
        return server
    embedded = EmbeddedPostgres(settings.data_dir)
    server = DatabaseServer(await asyncio.to_thread(embedded.start), embedded)
    try:
        if prepare != "none":
            await upgrade(server.conninfo, settings)
    except BaseException:
        await server.stop()
        raise
    return server


@asynccontextmanager
async def configured_server(settings: Settings, *, prepare: Prepare = "check"
                            ) -> AsyncIterator[DatabaseServer]:
    """:func:`open_server` for the duration of a block."""
    server = await open_server(settings, prepare=prepare)
    try:
        yield server
    finally:
        await server.stop()
