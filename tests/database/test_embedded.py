"""The embedded default database (tmws.database.EmbeddedPostgres)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tmws.database import EmbeddedPostgres
from tmws.errors import DatabaseError


def test_a_new_directory_gets_the_newest_bundled_postgresql(tmp_path: Path) -> None:
    embedded = EmbeddedPostgres(tmp_path)
    conninfo = embedded.start()
    try:
        with psycopg.connect(conninfo) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            vector = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert version is not None and int(version[0]) >= 180000
        assert vector is not None and tuple(map(int, vector[0].split("."))) >= (0, 8)
    finally:
        embedded.stop()
    assert (tmp_path / "pgdata" / "PG_VERSION").read_text().strip() == "18"


OLD_BUNDLE = """
import sys, pgserver
server = pgserver.get_server(sys.argv[1], cleanup_mode="stop")
server.psql("CREATE DATABASE tmws;")
server.psql("CREATE TABLE kept (note text);")
server.psql("INSERT INTO kept VALUES ('written by pgserver 0.1.4');")
server.cleanup()
"""


@pytest.mark.skipif(sys.version_info >= (3, 13),
                    reason="pgserver 0.1.4 (the earlier bundle) has no wheels past CPython 3.12")
def test_a_directory_made_by_the_earlier_bundle_still_opens(tmp_path: Path) -> None:
    """Data directories created by tmws before the bundle changed (pgserver 0.1.4,
    PostgreSQL 16.2) open with the new bundle's PostgreSQL 16, data and all."""
    pgdata = tmp_path / "pgdata"
    subprocess.run([sys.executable, "-c", OLD_BUNDLE, str(pgdata)], check=True, timeout=120)
    assert (pgdata / "PG_VERSION").read_text().strip() == "16"
    embedded = EmbeddedPostgres(tmp_path)
    conninfo = embedded.start()
    try:
        with psycopg.connect(conninfo.replace("/tmws?", "/postgres?")) as conn:
            kept = conn.execute("SELECT note FROM kept").fetchone()
            version = conn.execute("SHOW server_version_num").fetchone()
        assert kept == ("written by pgserver 0.1.4",)
        assert version is not None and 160000 <= int(version[0]) < 170000
    finally:
        embedded.stop()


def test_a_cluster_of_an_unbundled_version_is_refused_by_name(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("13\n")
    with pytest.raises(DatabaseError, match="PostgreSQL 13 cluster; the embedded bundle runs"):
        EmbeddedPostgres(tmp_path).start()
