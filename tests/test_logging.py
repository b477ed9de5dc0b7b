"""JSON logs: fields, request id, exceptions, levels, SQL echo, redaction, rotation, Granian."""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fix_server import start_server as _start
from tests.fix_server import stop_server as _stop
from tmws._logging import (
    REDACTED,
    SQL_LOGGER,
    RedactSecrets,
    RotatingFileHandler,
    configure_logging,
    granian_log_options,
)
from tmws._request_context import request_id
from tmws.config import Settings
from tmws.errors import ConfigError

_TOUCHED = ("_granian", "granian.access", SQL_LOGGER)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Every test here reconfigures logging: put the root logger (and the named loggers
    the configuration sets) back as they were, and close the handlers it opened."""
    root = logging.getLogger()
    saved_root = (root.level, root.handlers[:], root.filters[:])
    saved = {name: (lg.level, lg.handlers[:], lg.propagate, lg.disabled)
             for name in _TOUCHED for lg in [logging.getLogger(name)]}
    yield
    for handler in root.handlers:
        if handler not in saved_root[1]:
            handler.close()
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    root.filters[:] = saved_root[2]
    for name, (level, handlers, propagate, disabled) in saved.items():
        lg = logging.getLogger(name)
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate, lg.disabled = propagate, disabled


def _settings(log_file: Path | None, **env: str) -> Settings:
    values = {f"TMWS_{k.upper()}": v for k, v in env.items()}
    if log_file is not None:
        values["TMWS_LOG_FILE"] = str(log_file)
    return Settings.from_env(values)


def _lines(log_file: Path) -> list[dict[str, Any]]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    records = []
    for line in log_file.read_text().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict)
        records.append(record)
    return records


def _file_handler() -> RotatingFileHandler:
    [handler] = [h for h in logging.getLogger().handlers if isinstance(h, RotatingFileHandler)]
    return handler


def test_every_line_is_json_with_the_request_id_inside_requests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = tmp_path / "logs" / "tmws.log"
    configure_logging(_settings(log_file), stream="stdout")
    log = logging.getLogger("tmws.test")
    log.info("outside %s", "any request", extra={"answer": 42})
    token = request_id.set("req-123")
    try:
        log.warning("inside a request")
    finally:
        request_id.reset(token)
    log.info("after the request")

    first, second, third = _lines(log_file)
    assert {k: first[k] for k in ("level", "logger", "message", "answer")} == {
        "level": "INFO", "logger": "tmws.test", "message": "outside any request", "answer": 42}
    assert "request_id" not in first and "request_id" not in third
    assert second["request_id"] == "req-123" and second["level"] == "WARNING"
    for record in (first, second, third):
        stamp = datetime.fromisoformat(record["timestamp"])
        assert stamp.utcoffset() == timedelta(0)
        assert list(record)[:4] == ["timestamp", "level", "logger", "message"]
    console = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["message"] for r in console] == [
        "outside any request", "inside a request", "after the request"]


def test_exception_is_one_line_with_exc_info(tmp_path: Path) -> None:
    log_file = tmp_path / "tmws.log"
    configure_logging(_settings(log_file))
    try:
        raise RuntimeError("it broke\nacross lines")
    except RuntimeError:
        logging.getLogger("tmws.test").exception("handler failed")
    text = log_file.read_text()
    assert text.count("\n") == 1
    [record] = _lines(log_file)
    assert record["message"] == "handler failed" and record["level"] == "ERROR"
    assert record["exc_info"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: it broke\nacross lines" in record["exc_info"]


def test_debug_setting_forces_debug_level(tmp_path: Path) -> None:
    log_file = tmp_path / "tmws.log"
    configure_logging(_settings(log_file, debug="true", log_level="WARNING"))
    assert logging.getLogger().level == logging.DEBUG
    logging.getLogger("tmws.test").debug("a debug line")
    assert [r["level"] for r in _lines(log_file)] == ["DEBUG"]


def test_filtered_levels_and_sql_echo_at_info(tmp_path: Path) -> None:
    from tmws.database._pool import sql_logger

    assert sql_logger.name == SQL_LOGGER  # the logger the pool echoes statements to
    log_file = tmp_path / "tmws.log"
    configure_logging(_settings(log_file, log_level="WARNING", db_echo="true"))
    other = logging.getLogger("tmws.engine")
    assert not other.isEnabledFor(logging.INFO)  # dropped before a record is even made
    other.info("not shown")
    sql_logger.info("SQL %s", "SELECT 1", extra={"params_count": 0})
    [record] = _lines(log_file)
    assert record["logger"] == SQL_LOGGER and record["level"] == "INFO"
    assert record["message"] == "SQL SELECT 1" and record["params_count"] == 0

    configure_logging(_settings(log_file, log_level="WARNING"))  # echo off: back to WARNING
    assert not sql_logger.isEnabledFor(logging.INFO)


def test_secrets_are_redacted(tmp_path: Path) -> None:
    log_file = tmp_path / "tmws.log"
    secret = "s3cret-" + "k" * 40
    settings = _settings(log_file, secret_key=secret, embedding_api_key="sk-embedding-key",
                         database_url="postgresql://tmws:db%2Fpass@db.example/tmws",
                         redis_url="redis://:redis-pass@cache.example:6379/0")
    configure_logging(settings)
    log = logging.getLogger("tmws.test")
    log.warning("key %s and %s", secret, "sk-embedding-key")
    log.warning("connecting to %s", settings.database_url)
    log.warning("decoded password db/pass, redis %s", settings.redis_url)
    try:
        raise ValueError(f"bad token signed with {secret}")
    except ValueError:
        log.exception("auth failed")
    text = log_file.read_text()
    for leaked in (secret, "sk-embedding-key", "db%2Fpass", "db/pass", "redis-pass"):
        assert leaked not in text
    records = _lines(log_file)
    assert records[0]["message"] == f"key {REDACTED} and {REDACTED}"
    assert records[1]["message"] == f"connecting to postgresql://tmws:{REDACTED}@db.example/tmws"
    assert REDACTED in records[3]["exc_info"] and "ValueError" in records[3]["exc_info"]


def test_no_redaction_filter_without_secrets(tmp_path: Path) -> None:
    configure_logging(_settings(tmp_path / "tmws.log"))
    for handler in logging.getLogger().handlers:
        assert not any(isinstance(f, RedactSecrets) for f in handler.filters)


def test_unwritable_log_file_names_the_variable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as raised:
        configure_logging(_settings(blocker / "tmws.log"))
    assert raised.value.variable == "TMWS_LOG_FILE" and "TMWS_LOG_FILE" in str(raised.value)
    with pytest.raises(ConfigError, match="TMWS_LOG_FILE"):
        configure_logging(_settings(tmp_path))  # a directory


def test_rotation_parameters_and_idempotence(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "tmws.log")
    configure_logging(settings)
    handler = _file_handler()
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert (handler.maxBytes, handler.backupCount) == (100_000_000, 10)
    assert handler.baseFilename == str(tmp_path / "tmws.log")
    configure_logging(settings)  # as the app factory does in each worker: nothing changes
    assert _file_handler() is handler


def test_processes_sharing_the_file_rotate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    # Two handlers on one path stand for two worker processes.
    first, second = (RotatingFileHandler(path, maxBytes=200, backupCount=3) for _ in range(2))
    for handler in (first, second):
        handler.setFormatter(logging.Formatter("%(message)s"))

    def emit(handler: logging.Handler, message: str) -> None:
        handler.handle(logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None))

    try:
        emit(second, "second's first line")
        for n in range(10):
            emit(first, f"line {n:02d} " + "x" * 30)
        assert (tmp_path / "shared.log.1").exists()
        emit(second, "second after the rotation")
        assert "second after the rotation" in path.read_text()  # follows the new file
        assert not (tmp_path / "shared.log.2").exists()  # and did not rotate it again
    finally:
        first.close()
        second.close()


def test_granian_loggers_use_the_same_configuration(tmp_path: Path) -> None:
    from granian.log import configure_logging as granian_configure
    from granian.log import log_request_builder

    log_file = tmp_path / "tmws.log"
    settings = _settings(log_file, debug="true")
    options = granian_log_options(settings)
    assert options["log_level"] == "debug" and options["log_access"] is True
    # What Granian does in the server process and in each spawned worker ...
    granian_configure(options["log_level"], options["log_dictconfig"])
    handler = _file_handler()
    logging.getLogger("_granian").info("Spawning worker-1")
    log_access = log_request_builder(options["log_access_format"])  # type: ignore[no-untyped-call]
    request = {"addr_remote": "127.0.0.1", "path": "/health", "qs": "", "method": "GET",
               "scheme": "http", "protocol": "HTTP/1.1"}
    log_access(1_700_000_000.0, 0.0, request, 200)
    # ... after which the app factory's configure_logging() changes nothing.
    configure_logging(settings)
    assert _file_handler() is handler
    granian_line, access = _lines(log_file)
    assert granian_line["logger"] == "_granian" and granian_line["message"] == "Spawning worker-1"
    assert access["logger"] == "granian.access"
    assert access["message"].startswith('127.0.0.1 - "GET /health HTTP/1.1" 200')
    assert (access["method"], access["path"], access["status"]) == ("GET", "/health", 200)
    assert "time" not in access


def test_served_logs_are_json(database_url: str, tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "tmws.log"
    # Two workers: spawned processes, configured through Granian's log_dictconfig.
    process, base = _start({"TMWS_DATABASE_URL": database_url, "TMWS_LOG_FILE": str(log_file),
                            "TMWS_LOG_LEVEL": "INFO", "TMWS_WORKERS": "2"}, tmp_path)
    try:
        response = httpx.post(f"{base}/api/v1/execute", json={"query": "check health"},
                              timeout=10)
        assert response.status_code == 200
        deadline = time.monotonic() + 30  # the other worker may still be starting
        while log_file.read_text().count('"logger": "tmws.engine"') < 2:
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)
    finally:
        _stop(process)
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert all(isinstance(r, dict) and {"timestamp", "level", "logger", "message"} <= r.keys()
               for r in records)
    loggers = [r["logger"] for r in records]
    assert "_granian" in loggers  # Granian's own lines
    assert loggers.count("tmws.engine") == 2, records  # the app, in each worker
    # The console (stdout, and stderr before Granian starts) carries the same JSON lines.
    console = (tmp_path / f"server-{base.rsplit(':', 1)[1]}.log").read_text().splitlines()
    assert console and all(isinstance(json.loads(line), dict) for line in console)
