"""``tmws mcp``: MCP over stdio for a local agent that spawns tmws, acting as one principal
(a token's, or ``--namespace`` with ``--scopes``) on the configured database and Redis."""

from __future__ import annotations

from mcp.server.stdio import stdio_server

from tmws.auth import Principal
from tmws.config import Settings
from tmws.engine import create_pattern_execution_engine
from tmws.mcp.server import create_server

__all__ = ["serve_stdio"]


async def serve_stdio(settings: Settings, principal: Principal) -> None:
    """Serve MCP on stdin/stdout until the client closes them."""
    engine = await create_pattern_execution_engine(settings)
    try:
        server = create_server(lambda: engine, lambda: principal)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await engine.close()
