"""The HTTP service, started for real with `tmws serve` under Granian."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fix_server import server_env as _env
from tests.fix_server import start_server as _start
from tests.fix_server import stop_server as _stop
from tests.loopback import free_port


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, base = _start({"TMWS_DATABASE_URL": database_url},
                           tmp_path_factory.mktemp("server"))
    yield base
    _stop(process)


def post(base: str, path: str, body: bytes | str, content_type: str = "application/json"
         ) -> httpx.Response:
    data = body.encode() if isinstance(body, str) else body
    return httpx.post(base + path, content=data, headers={"content-type": content_type},
                      timeout=10)


def test_execute_check_health(server: str) -> None:
    response = post(server, "/api/v1/execute", '{"query": "check health"}')
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["pattern_name"] == "health_check"
    assert body["result"]["database"]["status"] == "ok"


def test_route_and_stats(server: str) -> None:
    decision = post(server, "/api/v1/route",
                    '{"query": "recall memories about auth", "execution_mode": "balanced"}')
    assert decision.status_code == 200
    assert decision.json()["pattern_name"] == "recall_memory"
    assert decision.json()["decided_by"] == "trigger"
    stats = httpx.get(server + "/api/v1/stats", timeout=5)
    assert stats.status_code == 200
    assert stats.json()["registry_stats"]["total_patterns"] >= 14


def test_store_and_recall_over_http(server: str) -> None:
    stored = post(server, "/api/v1/execute",
                  '{"query": "remember the staging cluster runs on spot nodes",'
                  ' "context": {"namespace": "http-test", "tags": ["infra"]}}')
    assert stored.status_code == 200 and stored.json()["success"], stored.text
    recalled = post(server, "/api/v1/execute",
                    '{"query": "recall memories about staging nodes",'
                    ' "context": {"namespace": "http-test"}}')
    memories = recalled.json()["result"]["memories"]
    assert memories[0]["content"] == "the staging cluster runs on spot nodes"


@pytest.mark.parametrize(("body", "status", "code", "fragment"), [
    ('{"query": "check health"', 400, "malformed_json", "not valid JSON"),
    ("", 400, "empty_body", "body is empty"),
    ("[1, 2]", 422, "validation_error", "Expected `object`"),
    ("{}", 422, "validation_error", "missing required field `query`"),
    ('{"query": ""}', 422, "empty_query", "query is empty"),
    ('{"query": 42}', 422, "validation_error", "$.query"),
    ('{"query": "check health", "execution_mode": "warp"}', 422, "unknown_mode",
     "fast, balanced, comprehensive"),
    ('{"query": "check health", "colour": "red"}', 422, "validation_error",
     "unknown field `colour`"),
    ('{"query": "check health", "context": {"namespace": 5}}', 422, "invalid_request",
     "namespace"),
    ('{"query": "' + "x" * 2001 + '"}', 413, "query_too_long", "limit is 2000"),
    ('{"query": "' + "x" * 70000 + '"}', 413, "body_too_large", "65536 bytes"),
])
def test_bad_requests_get_clear_json_errors(server: str, body: str, status: int, code: str,
                                            fragment: str) -> None:
    response = post(server, "/api/v1/execute", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert fragment in error["message"]


def test_wrong_content_type_method_and_path(server: str) -> None:
    response = post(server, "/api/v1/execute", "query=check", "application/x-www-form-urlencoded")
    assert response.status_code == 415
    response = httpx.get(server + "/api/v1/execute", timeout=5)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    response = httpx.get(server + "/api/v2/nothing", timeout=5)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_service_keeps_serving_after_bad_input(server: str) -> None:
    for _ in range(3):
        post(server, "/api/v1/execute", "{nope")
    assert post(server, "/api/v1/execute", '{"query": "check health"}').json()["success"]


@pytest.mark.parametrize(("path", "body"), [
    # PostgreSQL stores no NUL character in text or jsonb.
    ("/api/v1/memories", '{"content": "a\\u0000b", "namespace": "http-nul"}'),
    ("/api/v1/memories", '{"content": "ok", "namespace": "http-nul", "tags": ["a\\u0000"]}'),
    ("/api/v1/memories", '{"content": "ok", "namespace": "http-nul",'
                         ' "metadata": {"k\\u0000": 1}}'),
    ("/api/v1/memories/search", '{"tags": ["a\\u0000"], "namespace": "http-nul"}'),
    ("/api/v1/execute", '{"query": "tagged with x", "context": {"tag": "a\\u0000"}}'),
])
def test_values_the_database_refuses_are_422_not_500(server: str, path: str, body: str) -> None:
    """Found by tests/test_openapi_fuzz.py: these were 500 internal_error. Writes are
    refused by the memory rules before the database sees them (naming the field); reads
    by the database's refusal, answered as the caller's input."""
    response = post(server, path, body)
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert ("the database refused a value" in message
            or "contains a NUL character" in message), message


def test_an_importance_below_float4_is_stored_as_it_reads_back(server: str) -> None:
    """Found by tests/test_openapi_fuzz.py (a 500, then a 422 from PostgreSQL's real
    column): the value is now rounded to the column's precision before it is written."""
    response = post(server, "/api/v1/memories",
                    '{"content": "ok", "namespace": "http-nul", "importance": 5e-324}')
    assert response.status_code == 201, response.text
    assert response.json()["importance"] == 0.0


@pytest.mark.parametrize(("path", "body", "where"), [
    # Once refused by PostgreSQL's interval arithmetic; now by the one rule for days.
    ("/api/v1/memories/search", '{"days": 1e300, "namespace": "http-nul"}', "`$.days`"),
    ("/api/v1/execute", '{"query": "recent memories", "context": {"days": 1e300}}',
     "`context.days`"),
])
def test_days_beyond_a_century_are_refused_by_field(server: str, path: str, body: str,
                                                     where: str) -> None:
    response = post(server, path, body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].endswith(f"<= 36500.0 - at {where}")


@pytest.mark.parametrize("overrides", [
    {"cache_ttl": 2**70}, {"priority": 2**63}, {"metadata": {"n": -(2**70)}}])
def test_out_of_range_pattern_numbers_leave_the_registry_working(
        server: str, overrides: dict[str, object]) -> None:
    """Found by tests/test_openapi_fuzz.py: such a pattern got into the registry half-way
    (500), and every later registration or deletion failed with a 500 until a restart."""
    pattern: dict[str, object] = {"name": "huge_number", "pattern_type": "memory",
                                  "trigger_pattern": "hugenumberprobe", **overrides}
    response = post(server, "/api/v1/patterns", json.dumps(pattern))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_pattern"
    assert httpx.get(server + "/api/v1/patterns/huge_number", timeout=5).status_code == 404
    probe = {"name": "after_huge_number", "pattern_type": "memory",
             "trigger_pattern": "afterhugenumberprobe"}
    assert post(server, "/api/v1/patterns", json.dumps(probe)).status_code == 201
    deleted = httpx.delete(server + "/api/v1/patterns/after_huge_number", timeout=5)
    assert deleted.status_code == 200, deleted.text


def test_embedded_default_with_two_workers(tmp_path: Path) -> None:
    """No TMWS_DATABASE_URL: the bundled PostgreSQL starts, serves both workers, stops."""
    data_dir = tmp_path / "data"
    process, base = _start({"TMWS_DATA_DIR": str(data_dir), "TMWS_WORKERS": "2"}, tmp_path)
    try:
        for _ in range(4):
            response = post(base, "/api/v1/execute", '{"query": "check health"}')
            assert response.status_code == 200 and response.json()["success"], response.text
        stored = post(base, "/api/v1/execute", '{"query": "remember embedded mode works"}')
        assert stored.json()["success"], stored.text
    finally:
        assert _stop(process) == 0
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    deadline = time.monotonic() + 15
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_file.exists(), "embedded PostgreSQL was not stopped on exit"


def test_readiness_reports_each_dependency(server: str) -> None:
    response = httpx.get(server + "/health/ready", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"pattern_engine": True, "database": True, "redis": True,
                               "healthy": True, "ready": True}


def test_metrics_use_the_guides_names_and_labels(server: str) -> None:
    post(server, "/api/v1/execute", '{"query": "run tool vector_search"}')
    post(server, "/api/v1/execute", '{"query": "run tool vector_search"}')
    post(server, "/api/v1/execute", '{"query": "what is the weather in paris"}')
    response = httpx.get(server + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert ('tmws_pattern_executions_total{pattern_name="execute_mcp_tool",'
            'pattern_type="infrastructure",success="true"}') in text
    assert 'pattern_name="none"' in text and "weather" not in text  # bounded labels
    assert 'tmws_pattern_execution_duration_seconds_bucket{le="0.01",' \
           'pattern_type="infrastructure"}' in text
    assert 'tmws_pattern_tokens_used_total{pattern_type="infrastructure"}' in text
    assert 'tmws_pattern_cache_hit_rate{cache_type="local"}' in text
    assert "tmws_database_connections_active" in text
    assert "tmws_database_query_duration_seconds_bucket" in text
    assert 'tmws_info{pattern_service="enabled",version="0.1.0"} 1.0' in text


def _execution_samples(text: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every tmws_pattern_executions_total sample in a scrape."""
    return [(sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == "tmws_pattern_executions_total"]


def test_metrics_add_up_across_workers(database_url: str, tmp_path: Path) -> None:
    """Two Granian workers: every scrape, whichever worker answers it, reports every
    worker's executions, one tmws_info, and only bounded pattern_name labels."""
    metrics_dir = tmp_path / "prometheus"  # given, so that it can be inspected
    metrics_dir.mkdir()
    process, base = _start({"TMWS_DATABASE_URL": database_url, "TMWS_WORKERS": "2",
                            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, tmp_path)
    matched = [f"run tool number {i}" for i in range(30)]
    garbage = [f"zqxv {i} what is the weather in paris" for i in range(6)] + [
        "'; DROP TABLE memories; --", "ünïcødé ☃ plorp", "x" * 300, "{{label}} \"quoted\""]
    try:
        with httpx.Client(timeout=10) as client:
            names = {p["name"] for p in client.get(base + "/api/v1/patterns").json()["patterns"]}
            def execute(query: str) -> None:  # a new connection each: both workers get some
                response = client.post(base + "/api/v1/execute", json={"query": query},
                                       headers={"connection": "close"})
                if query in matched:
                    assert response.status_code == 200, response.text
                    assert response.json()["pattern_name"] == "execute_mcp_tool"
                    return
                # Garbage abstains (label "none") or lands on a registered pattern, which
                # may refuse it with a clear 4xx; either way the label is bounded.
                assert response.status_code in (200, 422), response.text
                body = response.json()
                named = (body["result"] if response.status_code == 422 else body)["pattern_name"]
                assert named is None or named in names, response.text

            for query in matched + garbage:
                execute(query)
            # prometheus-client's multiprocess files: one counter file per executing worker.
            # A worker still starting on a busy machine takes no connections yet: top up.
            while len(list(metrics_dir.glob("counter_*.db"))) < 2 and len(matched) < 300:
                matched.append(f"run tool number {len(matched)}")
                execute(matched[-1])
            executing = sorted(f.name for f in metrics_dir.glob("counter_*.db"))
            assert len(executing) == 2, f"one worker served every execute: {executing}"
            for _ in range(8):  # new connections: both workers answer some of the scrapes
                response = client.get(base + "/metrics", headers={"connection": "close"})
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                text = response.text
                samples = _execution_samples(text)
                assert sum(value for _, value in samples) == len(matched) + len(garbage), text
                assert {labels["pattern_name"] for labels, _ in samples} <= names | {"none"}
                assert sum(value for labels, value in samples
                           if labels["pattern_name"] == "execute_mcp_tool") == len(matched)
                assert "weather" not in text and "DROP" not in text and "plorp" not in text
                info = [line for line in text.splitlines() if line.startswith("tmws_info")]
                assert info == ['tmws_info{pattern_service="enabled",version="0.1.0"} 1.0'], info
    finally:
        assert _stop(process) == 0


_EXECUTE_BODY = b'{"query": "check health"}'
_EXECUTE_HEAD = (b"POST /api/v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % len(_EXECUTE_BODY))


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _refuses_connections(port: int, within: float) -> bool:
    """True once a new TCP connection to ``port`` is refused (polled for ``within`` s)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def test_sigterm_drains_an_in_flight_request(database_url: str, tmp_path: Path) -> None:
    """SIGTERM while a request is half sent: the listener closes at once, the request is
    still answered in full, and the server then exits 0 within TMWS_SHUTDOWN_TIMEOUT."""
    shutdown_timeout = 10
    process, base = _start({"TMWS_DATABASE_URL": database_url,
                            "TMWS_SHUTDOWN_TIMEOUT": str(shutdown_timeout)}, tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", _port(base)), timeout=15) as sock:
            sock.sendall(_EXECUTE_HEAD)  # the headers; the body is still to come
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert _refuses_connections(_port(base), within=5), \
                "new connections are still accepted 5 s after SIGTERM"
            time.sleep(1)  # the in-flight request outlives the listener by a while
            assert process.poll() is None, "the server exited with a request in flight"
            sock.sendall(_EXECUTE_BODY)
            response = http.client.HTTPResponse(sock)
            response.begin()
            body = response.read()
            assert response.status == 200, body
            assert response.getheader("connection") == "close"
        result = json.loads(body)
        assert result["success"] is True and result["pattern_name"] == "health_check"
        assert process.wait(timeout=shutdown_timeout + 5) == 0
        assert time.monotonic() - signalled < shutdown_timeout
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_cuts_a_request_that_outlasts_the_shutdown_timeout(
        database_url: str, tmp_path: Path) -> None:
    """A request still unfinished TMWS_SHUTDOWN_TIMEOUT after SIGTERM does not hold the
    server up: Granian kills the worker, the connection is closed unanswered."""
    shutdown_timeout = 2
    log = tmp_path / "server.log"
    process, base = _start({"TMWS_DATABASE_URL": database_url,
                            "TMWS_SHUTDOWN_TIMEOUT": str(shutdown_timeout)}, tmp_path, log=log)
    try:
        with socket.create_connection(("127.0.0.1", _port(base)), timeout=15) as sock:
            sock.sendall(_EXECUTE_HEAD)  # and never the body
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            process.wait(timeout=shutdown_timeout + 10)
            waited = time.monotonic() - signalled
            assert shutdown_timeout - 0.5 <= waited <= shutdown_timeout + 5, waited
            with contextlib.suppress(ConnectionResetError):  # closed without a response
                assert sock.recv(1024) == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "refused to gracefully stop" in log.read_text()


_SECRET = "served-secret-" + "0123456789abcdefghijklmnop"  # 40 characters


def test_auth_and_rate_limit_on_a_served_instance(database_url: str, redis_url: str,
                                                  tmp_path: Path) -> None:
    namespace = f"served-{uuid.uuid4().hex[:12]}"  # its own rate-limit key in Redis
    settings = {"TMWS_DATABASE_URL": database_url, "TMWS_AUTH_ENABLED": "true",
                "TMWS_SECRET_KEY": _SECRET, "TMWS_RATE_LIMIT_ENABLED": "true",
                "TMWS_RATE_LIMIT_REQUESTS": "5", "TMWS_REDIS_URL": redis_url,
                "TMWS_LOG_LEVEL": "DEBUG"}  # the most the server ever logs
    assert len(_SECRET) == 40
    log = tmp_path / "server.log"
    process, base = _start(settings, tmp_path, log=log)
    try:
        minted = subprocess.run(
            [sys.executable, "-m", "tmws", "token", "create", "--namespace", namespace,
             "--scopes", "execute"], env=_env(settings), capture_output=True, text=True,
            timeout=60, check=False)
        assert minted.returncode == 0, minted.stderr
        assert _SECRET not in minted.stdout + minted.stderr
        token = minted.stdout.strip()
        execute = {"query": "check health", "context": {"namespace": namespace}}
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/health").status_code == 200  # public
            anonymous = client.post("/api/v1/execute", json=execute)
            assert anonymous.status_code == 401, anonymous.text
            forged = client.post("/api/v1/execute", json=execute,
                                 headers={"authorization": f"Bearer {token[:-4]}AAAA"})
            assert forged.status_code == 401, forged.text
            bearer = {"authorization": f"Bearer {token}"}
            remaining = []
            for _ in range(5):
                allowed = client.post("/api/v1/execute", json=execute, headers=bearer)
                assert allowed.status_code == 200, allowed.text
                assert allowed.json()["success"] is True
                remaining.append(int(allowed.headers["ratelimit-remaining"]))
            assert remaining == [4, 3, 2, 1, 0]
            limited = client.post("/api/v1/execute", json=execute, headers=bearer)
            assert limited.status_code == 429, limited.text
            assert limited.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(limited.headers["retry-after"]) <= 60
            # Scopes are checked before the rate limit: still a 403, not a 429.
            denied = client.get("/api/v1/stats", headers=bearer)
            assert denied.status_code == 403, denied.text
    finally:
        assert _stop(process) == 0
    output = log.read_text()
    assert "granian.access" in output  # DEBUG: every request was logged
    assert _SECRET not in output


@pytest.mark.parametrize(("settings", "named"), [
    ({"TMWS_DEBUG": "true", "TMWS_AUTH_ENABLED": "true"}, "TMWS_DEBUG"),
    ({"TMWS_AUTH_ENABLED": "true", "TMWS_SECRET_KEY": "short-secret-4711"}, "TMWS_SECRET_KEY"),
    ({"TMWS_SECRET_KEY": "short-secret-4711"}, "TMWS_SECRET_KEY"),
    ({}, "TMWS_AUTH_ENABLED"),
])
def test_production_refuses_unsafe_settings(database_url: str, settings: dict[str, str],
                                            named: str) -> None:
    env = {"TMWS_ENVIRONMENT": "production", "TMWS_DATABASE_URL": database_url,
           "TMWS_API_PORT": str(free_port()), "TMWS_SECRET_KEY": _SECRET, **settings}
    started = time.monotonic()
    refused = subprocess.run([sys.executable, "-m", "tmws", "serve"], env=_env(env),
                             capture_output=True, text=True, timeout=60, check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert time.monotonic() - started < 15
    assert named in output
    assert env["TMWS_SECRET_KEY"] not in output
    assert "Traceback" not in output
