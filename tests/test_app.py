"""The HTTP service, started for real with `tmws serve` under Granian."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


def _start(env_overrides: dict[str, str], tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TMWS_")}
    env.update({"TMWS_API_PORT": str(port), "TMWS_LOG_LEVEL": "WARNING",
                "TMWS_DB_MAX_CONNECTIONS": "2"}, **env_overrides)
    log = open(tmp / f"server-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([sys.executable, "-m", "tmws", "serve"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {(tmp / f'server-{port}.log').read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not become ready within 60 s")


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


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
                               "healthy": True}


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


def test_metrics_add_up_across_workers(tmp_path: Path) -> None:
    """Two Granian workers: any scrape reports every worker's executions."""
    process, base = _start({"TMWS_DATA_DIR": str(tmp_path / "data"), "TMWS_WORKERS": "2"},
                           tmp_path)
    try:
        sent = 30
        with httpx.Client(timeout=10) as client:  # new connections spread over the workers
            for i in range(sent):
                response = client.post(base + "/api/v1/execute",
                                       json={"query": f"run tool number {i}"},
                                       headers={"connection": "close"})
                assert response.status_code == 200
        for _ in range(6):  # whichever worker answers the scrape
            text = httpx.get(base + "/metrics", headers={"connection": "close"},
                             timeout=10).text
            line = next(x for x in text.splitlines() if x.startswith(
                'tmws_pattern_executions_total{pattern_name="execute_mcp_tool"'))
            assert float(line.rsplit(" ", 1)[1]) == sent
            assert 'tmws_info{pattern_service="enabled",version="0.1.0"} 1.0' in text
    finally:
        assert _stop(process) == 0
