"""Prometheus metrics of MCP tool calls, named like the pattern metrics (tmws.metrics)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

__all__ = ["TOOL_CALLS", "TOOL_DURATION", "TOOL_ERRORS"]

# ``tool`` is a registered tool's name or ``unknown``; ``code`` a stable error code.
TOOL_CALLS: Final = Counter("tmws_mcp_tool_calls_total", "MCP tool calls", ["tool"])
TOOL_ERRORS: Final = Counter("tmws_mcp_tool_errors_total", "MCP tool calls answered with a "
                             "tool error", ["tool", "code"])
TOOL_DURATION: Final = Histogram(
    "tmws_mcp_tool_duration_seconds", "MCP tool call duration", ["tool"],
    buckets=[0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0])
