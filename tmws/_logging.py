"""Logging set-up from the settings: level, optional rotating file, SQL echo."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from tmws.config import Settings
from tmws.errors import ConfigError

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# The operations guide's rotation: 100 MB per file, 10 files kept.
_MAX_BYTES = 100_000_000
_BACKUPS = 10


def configure_logging(settings: Settings) -> None:
    """Configure the root logger once, at process start."""
    level = "DEBUG" if settings.debug else settings.log_level
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_file:
        path = Path(settings.log_file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.handlers.RotatingFileHandler(
                path, maxBytes=_MAX_BYTES, backupCount=_BACKUPS, encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("TMWS_LOG_FILE", f"cannot write {path}: {exc.strerror}") from None
    logging.basicConfig(level=level, format=_FORMAT, handlers=handlers, force=True)
    # TMWS_DB_ECHO logs statements at INFO whatever the level of the rest.
    if settings.db_echo:
        logging.getLogger("tmws.database.sql").setLevel(logging.INFO)
