"""``tmws serve``: Granian in front of the ASGI app, with the embedded database if needed."""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import shutil
import tempfile

import msgspec

from tmws._logging import granian_log_options
from tmws.config import Settings
from tmws.database import open_server
from tmws.http.app import create_app
from tmws.patterns import default_library_path, load_pattern_file, require_patterns

__all__ = ["serve"]

logger = logging.getLogger("tmws.server")


def serve(settings: Settings) -> None:
    """Run the service until interrupted (SIGINT/SIGTERM)."""
    from granian import Granian
    from granian.constants import Interfaces

    # Fail here, with the file and pattern named, rather than inside every worker.
    require_patterns(load_pattern_file(settings.pattern_config or default_library_path(),
                                       limits=settings.pattern_limits),
                     settings.pattern_allow_empty)
    # An embedded server starts once here, so every worker shares one server and one
    # migration run; each worker's engine checks an external one itself.
    server = asyncio.run(open_server(settings, prepare="migrate-embedded"))
    # The workers get these settings, with the server's address, as their app's argument.
    worker_settings = msgspec.structs.replace(settings, database_url=server.conninfo)
    # Several workers share metrics through prometheus-client's multiprocess mode. It costs
    # a file-backed write per sample (~20% of a cache hit's throughput, measured), so one
    # worker keeps plain in-memory metrics. Workers must import prometheus-client with
    # PROMETHEUS_MULTIPROC_DIR already set: they are spawned fresh, not forked from here.
    multiproc_dir = None
    if settings.workers > 1:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiproc_dir = tempfile.mkdtemp(prefix="tmws-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
        multiprocessing.set_start_method("spawn", force=True)
    try:
        Granian(
            "tmws.http.app:create_app",  # named for Granian's logs; workers load the one below
            factory=True,
            address=settings.api_host,
            port=settings.api_port,
            interface=Interfaces.ASGI,
            workers=settings.workers,
            # SIGTERM stops accepting and lets in-flight requests finish for this long.
            workers_kill_timeout=settings.shutdown_timeout,
            **granian_log_options(settings),  # JSON lines, also in every worker
        ).serve(target_loader=functools.partial(create_app, worker_settings), wrap_loader=False)
    finally:
        if multiproc_dir is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(multiproc_dir, ignore_errors=True)
        asyncio.run(server.stop())
