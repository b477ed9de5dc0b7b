"""Fixture plugin: a private PgBouncer in transaction pooling mode in front of the
session's PostgreSQL (``database_url``).

Nothing is installed here: ``make pgbouncer`` (Debian's package) does that, and a missing
``pgbouncer`` fails the test. The pool is deliberately small (``default_pool_size`` 2), so
that more clients than server connections run at once and their statements really
interleave on shared server connections — where prepared statements and ``SET`` leak.
``tmws_one_server`` is the same database through a pool of exactly one server connection,
for tests that need two clients on one server session, deterministically.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.loopback import free_port

__all__ = ["DEFAULT_POOL_SIZE", "ONE_SERVER", "PgBouncer", "pgbouncer"]

DEFAULT_POOL_SIZE = 2
ONE_SERVER = "tmws_one_server"
_START_WITHIN = 10.0


class PgBouncer:
    """A pgbouncer process of the tests' own on a free loopback port."""

    def __init__(self, directory: Path, upstream: str) -> None:
        self.port = free_port()
        self._directory = directory
        self._log = directory / "pgbouncer.log"
        self._process: subprocess.Popen[bytes] | None = None
        params = conninfo_to_dict(upstream)
        self.user = str(params.get("user") or "postgres")
        self.dbname = str(params.get("dbname") or "tmws")
        host = str(params.get("host") or "127.0.0.1")
        port = str(params.get("port") or 5432)
        server = f"host={host} port={port}"
        lines = [
            "[databases]",
            f"{ONE_SERVER} = {server} dbname={self.dbname} pool_size=1",
            f"* = {server}",  # every database of the server, scratch ones included
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {directory / 'userlist.txt'}",
            "pool_mode = transaction",
            f"default_pool_size = {DEFAULT_POOL_SIZE}",
            "reserve_pool_size = 0",
            "min_pool_size = 0",
            "max_client_conn = 500",
            f"admin_users = {self.user}",
            # No ignore_startup_parameters: a client sending `options` must be refused,
            # as a default PgBouncer refuses it.
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # PgBouncer will not run as root; it runs as the user whose PostgreSQL socket
            # it must reach (the embedded server runs as 'pgserver' under root).
            owner = os.stat(host).st_uid if host.startswith("/") else None
            lines.append(f"user = {pwd.getpwuid(owner).pw_name if owner else 'nobody'}")
        (directory / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        (directory / "userlist.txt").write_text(f'"{self.user}" ""\n')

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{quote(self.user)}@127.0.0.1:{self.port}/{quote(dbname)}"

    @property
    def url(self) -> str:
        """The session's database through the pooler."""
        return self.url_for(self.dbname)

    def start(self) -> None:
        binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
        if binary is None:
            pytest.fail("pgbouncer is required and is not on PATH: `make pgbouncer` "
                        "(as root: apt-get install pgbouncer)")
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen(
                [binary, str(self._directory / "pgbouncer.ini")], stdout=log,
                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _START_WITHIN
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=1) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"pgbouncer did not start ({exc}); its log:\n"
                                f"{self._log.read_text(errors='replace')}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()  # SIGTERM: immediate shutdown
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def show(self, what: str) -> list[dict[str, object]]:
        """``SHOW <what>`` on the admin console (POOLS, SERVERS, CLIENTS...)."""
        with psycopg.connect(self.url_for("pgbouncer"), autocommit=True) as conn:
            cursor = conn.execute(f"SHOW {what}")  # simple protocol: the console needs it
            names = [column.name for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@pytest.fixture(scope="session")
def pgbouncer(database_url: str, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[PgBouncer]:
    """PgBouncer (transaction pooling, two server connections per database) in front of
    the session's PostgreSQL; stopped at the end of the session."""
    bouncer = PgBouncer(tmp_path_factory.mktemp("pgbouncer"), database_url)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
