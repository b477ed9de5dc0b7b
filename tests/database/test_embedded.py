"""The embedded default database (tmws.database.EmbeddedPostgres)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


HOLDER = """
import os, sys
from tmws.database import EmbeddedPostgres
EmbeddedPostgres(sys.argv[1]).start()
print("started", flush=True)
sys.stdin.read()  # until killed
"""


def _postmaster_running(data_dir: Path) -> bool:
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_holder_neither_blocks_the_next_start_nor_keeps_the_server(
        tmp_path: Path) -> None:
    """A tmws killed with SIGKILL cannot let go of the server: the next start joins the
    running server, and when that one stops, the server stops too (no orphan)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "started"
    holder.kill()
    holder.wait()
    assert _postmaster_running(tmp_path)  # orphaned by the kill

    embedded = EmbeddedPostgres(tmp_path)
    conninfo = embedded.start()
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    embedded.stop()
    assert not _postmaster_running(tmp_path)


def test_two_processes_share_one_directory(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert other.stdout is not None and other.stdout.readline().strip() == "started"
    embedded = EmbeddedPostgres(tmp_path)
    conninfo = embedded.start()
    try:
        with psycopg.connect(conninfo) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        embedded.stop()
    assert _postmaster_running(tmp_path)  # the other process still holds it
    assert other.stdin is not None
    other.stdin.close()  # it exits normally and lets go: the last holder stops the server
    other.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _postmaster_running(tmp_path):
        assert time.monotonic() < deadline, "the server outlived its last holder"
        time.sleep(0.2)
