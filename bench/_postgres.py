"""Where a bench script's PostgreSQL comes from: ``--database-url``, or an embedded one.

By default every script starts a private embedded PostgreSQL (the tmws[embedded] bundle) in
a temporary directory, so a measurement shares its database with nothing. ``--database-url``
names an existing database instead (its own: scripts that load memories drop and rebuild
indexes); the smoke tests pass a scratch database of the test server, which saves starting
one per script.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tmws.database import EmbeddedPostgres

__all__ = ["add_database_option", "postgres", "server_database_env"]


def add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL + pgvector database of the run's own (default: an "
                             "embedded one in a temporary directory)")


@contextmanager
def postgres(database_url: str | None, directory: str | Path) -> Iterator[str]:
    """The connection URL: ``database_url``, or an embedded server's in ``directory``
    (stopped on exit)."""
    if database_url is not None:
        yield database_url
        return
    embedded = EmbeddedPostgres(directory)
    try:
        yield embedded.start()
    finally:
        embedded.stop()


def server_database_env(database_url: str | None, data_dir: str | Path) -> dict[str, str]:
    """The ``tmws serve`` environment naming its database: the URL, or the data directory
    its embedded PostgreSQL lives in."""
    if database_url is not None:
        return {"TMWS_DATABASE_URL": database_url}
    return {"TMWS_DATA_DIR": str(data_dir)}
