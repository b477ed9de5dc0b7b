"""Logging set-up from the settings: JSON lines, optional rotating file, SQL echo, redaction.

One configuration serves every process. :func:`logging_dictconfig` builds it as a
``logging.config.dictConfig`` mapping; :func:`configure_logging` applies it (the CLI, and
idempotently in each server worker); ``tmws serve`` hands the same mapping to Granian
(:func:`granian_log_options`), which applies it in the server process and, before the app
factory runs, in every spawned worker — so Granian's own loggers (``_granian``, also used by
its Rust core, and ``granian.access``) write the same JSON lines to the same handlers.

Every line is one JSON object: ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``,
``message``, then ``exc_info``/``stack_info`` (a traceback stays inside the one line),
any ``extra`` fields, and ``request_id`` while a request is being handled.

Nothing here runs for a record the level filters out: loggers decide that before a record
exists. The request id is read when a record is formatted, never per request.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import logging.config
import logging.handlers
import os
import stat
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from tmws._request_context import request_id
from tmws.config import Settings
from tmws.errors import ConfigError

__all__ = [
    "BACKUP_COUNT",
    "MAX_BYTES",
    "JsonFormatter",
    "RedactSecrets",
    "RotatingFileHandler",
    "configure_logging",
    "effective_level",
    "granian_log_options",
    "logging_dictconfig",
]

# Rotation as deploy/README.md (Monitoring and Alerts) documents it: 100 MB per file, 10 kept.
MAX_BYTES: Final = 100_000_000
BACKUP_COUNT: Final = 10
# Where the database pool logs statements under TMWS_DB_ECHO (never their parameters).
SQL_LOGGER: Final = "tmws.database.sql"
REDACTED: Final = "<redacted>"
# Granian's access log line, less its local-time stamp (each line has a UTC timestamp);
# the same values are also fields of the JSON object.
_ACCESS_FORMAT: Final = '%(addr)s - "%(method)s %(path)s %(protocol)s" %(status)d %(dt_ms).3f'
_ACCESS_FIELDS: Final = ("addr", "method", "path", "query_string", "protocol", "scheme",
                         "status", "dt_ms")

Stream = Literal["stdout", "stderr"]


class JsonFormatter(_JsonFormatter):
    """python-json-logger's formatter with tmws's fields (see the module docstring).

    ``config_id`` identifies the configuration that created it, so that
    :func:`configure_logging` can tell its own configuration is already in place.
    """

    def __init__(self, config_id: str = "") -> None:
        super().__init__("%(levelname)s %(name)s %(message)s",
                         rename_fields={"levelname": "level", "name": "logger"})
        self.config_id = config_id

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        log_data["timestamp"] = (datetime.fromtimestamp(record.created, UTC)
                                 .isoformat(timespec="microseconds").replace("+00:00", "Z"))
        super().add_fields(log_data, record, message_dict)
        if record.name == "granian.access" and isinstance(record.args, Mapping):
            for field in _ACCESS_FIELDS:
                if field in record.args:
                    log_data[field] = record.args[field]
        current = request_id.get()
        if current is not None:
            log_data["request_id"] = current


class RedactSecrets(logging.Filter):
    """Replaces configured secrets in a record's message, traceback and stack with
    ``<redacted>``. Installed on the handlers only when there is a secret to hide."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so that a secret containing another is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._tracebacks = logging.Formatter()

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._tracebacks.formatException(record.exc_info)
        if record.exc_text:
            redacted = self.redact(record.exc_text)
            if redacted != record.exc_text:
                # Formatters prefer exc_info when present: leave them only the clean text.
                record.exc_text, record.exc_info = redacted, None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class RotatingFileHandler(logging.handlers.RotatingFileHandler):
    """The standard handler, made safe for the server's processes sharing one file.

    Each worker has its own handler on the same path. A process that finds the file
    already rotated by another reopens the new file instead of rotating again (which
    would shift a fresh file into the backups). The size check reads the file's size
    instead of formatting every record twice, as the standard handler does; a file may
    therefore exceed ``maxBytes`` by one line. Anything but a regular file (a FIFO,
    ``/dev/stdout``) is never rotated.
    """

    def _rotated_elsewhere(self) -> bool:
        assert self.stream is not None
        try:
            current = os.stat(self.baseFilename)
        except FileNotFoundError:
            return True
        opened = os.fstat(self.stream.fileno())
        return (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino)

    def _reopen(self) -> None:
        if self.stream is not None:
            self.stream.close()
        self.stream = self._open()

    def shouldRollover(self, record: logging.LogRecord) -> int:
        if self.stream is None:
            self.stream = self._open()
        if not stat.S_ISREG(os.fstat(self.stream.fileno()).st_mode) or self.maxBytes <= 0:
            return False
        if self._rotated_elsewhere():
            self._reopen()
        return self.stream.seek(0, os.SEEK_END) >= self.maxBytes

    def doRollover(self) -> None:
        if self.stream is not None and self._rotated_elsewhere():
            self._reopen()  # another process rotated it a moment ago
            return
        super().doRollover()


def effective_level(settings: Settings) -> str:
    """TMWS_LOG_LEVEL, or DEBUG when TMWS_DEBUG=true."""
    return "DEBUG" if settings.debug else settings.log_level


def _secrets(settings: Settings) -> list[str]:
    """The values that must never reach a log: the JWT secret, the embedding API key and
    the passwords in the database and Redis URLs (as written and percent-decoded)."""
    found = [settings.secret_key, settings.embedding_api_key]
    for url in (settings.database_url, settings.database_direct_url, settings.redis_url):
        if url:
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
            if password:
                found += [password, unquote(password)]
    return sorted({s for s in found if s})


def _check_log_file(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ConfigError("TMWS_LOG_FILE",
                          f"cannot write {path}: {exc.strerror or exc}") from None


def logging_dictconfig(settings: Settings, *, stream: Stream = "stdout") -> dict[str, Any]:
    """The ``dictConfig`` mapping for these settings (plain data: it is pickled to workers).

    Raises ConfigError naming TMWS_LOG_FILE if the log file cannot be written.
    """
    level = effective_level(settings)
    handlers: dict[str, dict[str, Any]] = {
        "console": {"class": "logging.StreamHandler", "formatter": "json",
                    "stream": f"ext://sys.{stream}"},
    }
    if settings.log_file:
        path = Path(settings.log_file)
        _check_log_file(path)
        handlers["file"] = {"class": f"{__name__}.RotatingFileHandler", "formatter": "json",
                            "filename": str(path), "maxBytes": MAX_BYTES,
                            "backupCount": BACKUP_COUNT, "encoding": "utf-8"}
    filters: dict[str, dict[str, Any]] = {}
    secrets = _secrets(settings)
    if secrets:
        filters["redact"] = {"()": f"{__name__}.RedactSecrets", "secrets": secrets}
        for handler in handlers.values():
            handler["filters"] = ["redact"]
    # TMWS_DB_ECHO: statements at INFO whatever the level of the rest.
    echo = settings.db_echo and logging.getLevelName(level) > logging.INFO
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "filters": filters,
        "handlers": handlers,
        "loggers": {
            # Granian's loggers write through the root's handlers, like everything else.
            "_granian": {"level": level, "handlers": [], "propagate": True},
            "granian.access": {"level": "NOTSET", "handlers": [], "propagate": True},
            SQL_LOGGER: {"level": "INFO" if echo else "NOTSET"},
            # httpx logs every embedding request at INFO: one line per routed query.
            "httpx": {"level": level if level in ("DEBUG", "ERROR", "CRITICAL")
                      else "WARNING"},
        },
        "root": {"level": level, "handlers": list(handlers)},
    }
    # Which console stream is used is not part of the identity: a worker configured by
    # Granian (stdout) is already configured for the app factory's configure_logging().
    identity = copy.deepcopy(config)
    identity["handlers"]["console"].pop("stream")
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    config["formatters"]["json"]["config_id"] = digest
    return config


def _installed_config_id() -> str | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return handler.formatter.config_id
    return None


def configure_logging(settings: Settings, *, stream: Stream = "stderr") -> None:
    """Configure this process's logging from the settings; idempotent.

    Does nothing if the same configuration is already in place (e.g. applied by Granian
    in a server worker). ``stream`` is the console stream; the default, stderr, keeps the
    stdout of commands such as ``tmws execute`` or ``tmws memories export`` for their
    output. ``tmws serve`` logs to stdout (see :func:`granian_log_options`).
    """
    config = logging_dictconfig(settings, stream=stream)
    if _installed_config_id() == config["formatters"]["json"]["config_id"]:
        return
    logging.config.dictConfig(config)


def granian_log_options(settings: Settings) -> dict[str, Any]:
    """``Granian(...)`` keyword arguments: the same JSON configuration, on stdout, applied by
    Granian in the server process and in every worker. Access lines (per-request work) are
    logged only at DEBUG."""
    level = effective_level(settings)
    return {
        "log_level": level.lower(),
        "log_dictconfig": logging_dictconfig(settings, stream="stdout"),
        "log_access": level == "DEBUG",
        "log_access_format": _ACCESS_FORMAT,
    }
