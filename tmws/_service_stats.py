"""``tmws stats``: the running service's statistics, from outside it.

The diagnosis steps (deploy/README.md, Troubleshooting) ask the service's own process
(``get_pool_stats()``) and the database (``pg_stat_statements``). From an operator's shell
this gathers the same facts: the answering worker's ``/api/v1/stats`` (with its pool), every
worker's connections as the database sees them (``pg_stat_activity`` by
``application_name``) and, where the server has it loaded, the slowest statements.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from tmws.config import Settings
from tmws.database import service_connections, slow_statements
from tmws.database._activity import running_conninfo
from tmws.errors import DatabaseError, TmwsError

__all__ = ["default_url", "fetch_service_stats", "gather_stats"]

_STATS_PATH = "/api/v1/stats"


def default_url(settings: Settings) -> str:
    """The service as this host reaches it (TMWS_API_HOST, TMWS_API_PORT)."""
    host = settings.api_host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}"


def fetch_service_stats(url: str, token: str | None, *, timeout: float = 10.0
                        ) -> dict[str, Any]:
    """``GET /api/v1/stats`` (scope metrics:read when auth is on); TmwsError saying what
    went wrong otherwise."""
    target = url.rstrip("/") + _STATS_PATH
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(target, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise TmwsError(f"cannot reach the service at {url} (--url): {exc}") from None
    if response.status_code == 401:
        raise TmwsError(f"{target} requires a token: pass --token (one with the "
                        "metrics:read scope, `tmws token create --scopes metrics:read`)")
    if response.status_code == 403:
        raise TmwsError(f"{target} refused the token: it needs the metrics:read scope")
    if response.status_code != 200:
        raise TmwsError(f"{target} answered {response.status_code}: "
                        f"{response.text[:200].strip()}")
    try:
        stats = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise TmwsError(f"{target} did not answer JSON: is --url a tmws service?") from None
    if not isinstance(stats, dict):
        raise TmwsError(f"{target} did not answer a JSON object: is --url a tmws service?")
    return stats


def gather_stats(settings: Settings, url: str | None, token: str | None) -> dict[str, Any]:
    """Service statistics, database connections and slow statements in one document."""
    report: dict[str, Any] = {"service": fetch_service_stats(url or default_url(settings),
                                                             token)}
    conninfo = running_conninfo(settings)
    report["database_connections"] = service_connections(conninfo) if conninfo else {
        "error": "TMWS_DATABASE_URL is not set and the embedded PostgreSQL is not running"}
    if conninfo:
        try:
            report["slow_statements"] = slow_statements(conninfo)
        except DatabaseError as exc:
            report["slow_statements"] = {"error": str(exc)}
    return report
