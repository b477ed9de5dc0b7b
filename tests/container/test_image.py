"""The container image, built and run as users run it: from the prebuilt wheel, beside
PostgreSQL with pgvector and Redis in their own containers, stopped with SIGTERM; and the
compose file brought up with podman-compose.

Run by ``make test-container`` (part of ``make test``): it builds the wheel (``make dist``)
and prepares podman with local stand-ins for the base images (``deploy/podman/setup.sh``).
A missing podman fails the run.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from tests.loopback import base_url, free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/tmws:test"
SECRET = secrets.token_hex(24)
DB_PASSWORD = secrets.token_hex(12)
# One query per pattern type of the default library, with the pattern it must reach.
QUERIES = {
    "infrastructure": ("check redis health", "health_check"),
    "memory": ("recall memories about the container rollout", "recall_memory"),
    "hybrid": ("find similar incidents about the container rollout", "semantic_search"),
}


def podman(*args: str, timeout: float = 300, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("podman")
    if executable is None:
        pytest.fail("podman is not installed: run `make podman` (deploy/podman/setup.sh)")
    done = subprocess.run([executable, *args], capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert done.returncode == 0, \
            f"podman {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def image() -> str:
    wheels = sorted((ROOT / "dist").glob("tmws-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in dist/ (make dist): {wheels}"
    podman("build", "--format", "docker", "--build-arg", "WHEEL_SOURCE=dist",
           "-t", IMAGE, str(ROOT), timeout=900)
    return IMAGE


class Stack(NamedTuple):
    network: str
    postgres: str
    redis: str

    def environment(self) -> list[str]:
        settings = {
            "TMWS_ENVIRONMENT": "production",
            "TMWS_DATABASE_URL":
                f"postgresql://tmws_user:{DB_PASSWORD}@{self.postgres}:5432/tmws",
            "TMWS_REDIS_URL": f"redis://{self.redis}:6379/0",
            "TMWS_SECRET_KEY": SECRET,
            "TMWS_AUTH_ENABLED": "true",
            "TMWS_STARTUP_WAIT": "60",
        }
        return [word for name, value in settings.items() for word in ("-e", f"{name}={value}")]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    found = Stack(f"tmws-ci-{suffix}", f"tmws-ci-pg-{suffix}", f"tmws-ci-redis-{suffix}")
    podman("network", "create", found.network)
    try:
        podman("run", "-d", "--name", found.postgres, "--network", found.network,
               "-e", "POSTGRES_USER=tmws_user", "-e", f"POSTGRES_PASSWORD={DB_PASSWORD}",
               "-e", "POSTGRES_DB=tmws", "pgvector/pgvector:pg16",
               "postgres", "-c", "max_connections=200")
        podman("run", "-d", "--name", found.redis, "--network", found.network,
               "redis:7-alpine", "redis-server", "--maxmemory", "256mb",
               "--maxmemory-policy", "allkeys-lru")
        yield found
    finally:
        podman("rm", "-f", "-t", "0", found.postgres, found.redis, check=False)
        podman("network", "rm", "-f", found.network, check=False)


def wait_ready(base: str, container: str, within: float = 120, *, auth: bool = True
               ) -> str | None:
    """Once /health/ready says every part is up: a token minted in the container
    (namespace ci, the default scopes), or None when ``auth`` is off."""
    deadline = time.monotonic() + within
    bearer: str | None = None
    last: Any = None
    while time.monotonic() < deadline:
        if auth and bearer is None:
            done = podman("exec", container, "tmws", "token", "create", "--namespace",
                          "ci", check=False)
            bearer = done.stdout.strip() if done.returncode == 0 else None
            last = done.stderr[-500:]
        if bearer is not None or not auth:
            try:
                response = httpx.get(f"{base}/health/ready", timeout=5,
                                     headers=authorization(bearer))
                last = (response.status_code, response.text)
                if response.status_code == 200 and response.json()["healthy"]:
                    return bearer
            except httpx.HTTPError as exc:
                last = exc
        time.sleep(1)
    logs = podman("logs", "--tail", "40", container, check=False)
    pytest.fail(f"not ready within {within} s: {last}\n{logs.stdout}{logs.stderr}")


def authorization(bearer: str | None) -> dict[str, str]:
    return {} if bearer is None else {"Authorization": f"Bearer {bearer}"}


def execute_each_type(base: str, bearer: str | None) -> None:
    headers = authorization(bearer)
    stored = httpx.post(f"{base}/api/v1/memories", headers=headers, timeout=30, json={
        "content": "The container rollout finished: image built from the prebuilt wheel.",
        "tags": ["container"], "importance": 0.8})
    assert stored.status_code == 201, stored.text
    for pattern_type, (query, pattern) in QUERIES.items():
        response = httpx.post(f"{base}/api/v1/execute", headers=headers, timeout=30,
                              json={"query": query})
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["success"] is True, result
        assert result["pattern_name"] == pattern, result
        assert result["metadata"]["routing"]["pattern_type"] == pattern_type, result
        if pattern_type == "memory":
            contents = [memory["content"] for memory in result["result"]["memories"]]
            assert any("container rollout" in content for content in contents), result


def published_port(container: str) -> int:
    mapping = podman("port", container, "8000/tcp").stdout.strip()
    return int(mapping.rsplit(":", 1)[1])


def test_image_runs_as_a_non_root_user_without_compilers(image: str) -> None:
    probe = podman("run", "--rm", image, "sh", "-c",
                   "id -u; command -v cargo rustc gcc cc maturin || true; tmws --help")
    lines = probe.stdout.splitlines()
    assert lines[0] == "1000", probe.stdout
    assert not any(line.startswith("/") for line in lines[1:]), probe.stdout
    assert "usage: tmws" in probe.stdout


_BODY = json.dumps({"query": QUERIES["infrastructure"][0]}).encode()


def test_image_serves_each_pattern_type_and_drains_on_sigterm(image: str,
                                                              stack: Stack) -> None:
    # Migrations from the image, as the compose file's `migrate` service runs them.
    migrated = podman("run", "--rm", "--network", stack.network, *stack.environment(),
                      image, "tmws", "db", "upgrade", timeout=180)
    assert "applied" in migrated.stdout or "current" in migrated.stdout, migrated.stdout
    name = f"{stack.network}-tmws"
    shutdown_timeout = 15
    podman("run", "-d", "--name", name, "--network", stack.network, *stack.environment(),
           "-e", "TMWS_WORKERS=2", "-e", f"TMWS_SHUTDOWN_TIMEOUT={shutdown_timeout}",
           "-p", "127.0.0.1::8000", image)
    try:
        port = published_port(name)
        base = base_url(port)
        bearer = wait_ready(base, name)
        assert bearer is not None
        execute_each_type(base, bearer)

        # SIGTERM with a request half sent: it is still answered, then tmws exits 0.
        head = (b"POST /api/v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nAuthorization: Bearer "
                + bearer.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(_BODY))
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head)
            time.sleep(0.5)
            podman("kill", "--signal", "TERM", name)
            signalled = time.monotonic()
            time.sleep(1.5)
            assert podman("inspect", "--format", "{{.State.Running}}", name
                          ).stdout.strip() == "true", "tmws exited with a request in flight"
            sock.sendall(_BODY)
            response = http.client.HTTPResponse(sock)
            response.begin()
            body = response.read()
            assert response.status == 200, body
        assert json.loads(body)["pattern_name"] == QUERIES["infrastructure"][1]
        exit_code = podman("wait", name, timeout=shutdown_timeout + 30).stdout.strip()
        assert exit_code == "0", podman("logs", "--tail", "40", name, check=False).stderr
        assert time.monotonic() - signalled < shutdown_timeout + 5
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def podman_compose(*args: str, project: str, variables: dict[str, str], timeout: float = 600
                   ) -> subprocess.CompletedProcess[str]:
    """podman-compose 1.0 (Debian's) has no --env-file: the variables come from the
    environment, as after `set -a; . deploy/.env; set +a`."""
    executable = shutil.which("podman-compose")
    if executable is None:
        pytest.fail("podman-compose is not installed: run `make podman`")
    command = [executable, "-p", project, "-f", str(ROOT / "deploy" / "docker-compose.yml"),
               *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **variables})
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_compose_file_comes_up_with_podman_compose(image: str) -> None:
    """podman-compose ignores `condition: service_healthy`: the stack must come up in any
    start order (TMWS_STARTUP_WAIT), with the image the compose file names."""
    project = f"tmws-ci-{uuid.uuid4().hex[:8]}"
    port = free_port()
    variables = {"DB_PASSWORD": DB_PASSWORD, "TMWS_SECRET_KEY": SECRET,
                 "HTTP_PORTS": f"127.0.0.1:{port}", "IMAGE_TAG": "test", "TMWS_WORKERS": "1"}
    try:
        podman_compose("up", "-d", "--no-build", project=project, variables=variables)
        container = f"{project}_tmws_1"
        base = base_url(port)
        bearer = wait_ready(base, container, within=180)
        execute_each_type(base, bearer)
        migrate = podman("inspect", "--format", "{{.State.ExitCode}}", f"{project}_migrate_1")
        assert migrate.stdout.strip() == "0"
    finally:
        podman_compose("down", "-v", "-t", "20", project=project, variables=variables)


def test_embedded_trial_image_runs_its_database_as_an_ordinary_user(image: str) -> None:
    """EXTRAS=embedded: one container, no TMWS_DATABASE_URL. The bundled PostgreSQL runs as
    the image's user (uid 1000) in /data, not as a system user the bundle creates for root."""
    trial = f"{IMAGE}-embedded"
    podman("build", "--format", "docker", "--build-arg", "WHEEL_SOURCE=dist",
           "--build-arg", "EXTRAS=embedded", "-t", trial, str(ROOT), timeout=900)
    name = f"tmws-ci-trial-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, "-p", "127.0.0.1::8000", trial)
    try:
        base = base_url(published_port(name))
        execute_each_type(base, wait_ready(base, name, within=180, auth=False))
        owners = podman("exec", name, "sh", "-c",
                        "stat -c %u /data/pgdata; for s in /proc/[0-9]*/status; do "
                        "grep -q '^Name:.*postgres' $s && awk '/^Uid:/ {print $2}' $s; "
                        "done | sort -u").stdout.split()
        assert owners == ["1000", "1000"], owners  # the directory, then every postgres
        podman("kill", "--signal", "TERM", name)
        assert podman("wait", name, timeout=60).stdout.strip() == "0"
        logs = podman("logs", name)
        assert "running as root" not in logs.stdout + logs.stderr
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
