"""Prometheus metrics, named and bucketed as the operations guide's dashboards expect."""

from __future__ import annotations

from typing import Final

from prometheus_client import Gauge, Histogram

__all__ = ["DATABASE_CONNECTIONS_ACTIVE", "DATABASE_QUERY_DURATION"]

DATABASE_CONNECTIONS_ACTIVE: Final = Gauge(
    "tmws_database_connections_active",
    "Active database connections",
)
DATABASE_QUERY_DURATION: Final = Histogram(
    "tmws_database_query_duration_seconds",
    "Database query duration",
    buckets=[0.01, 0.05, 0.1, 0.5, 1.0],
)
