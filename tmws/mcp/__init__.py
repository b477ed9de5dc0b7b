"""tmws as a Model Context Protocol server: tools and resources over stdio (``tmws mcp``)
and Streamable HTTP (``/mcp`` on the service)."""

from tmws.mcp.server import create_server

__all__ = ["create_server"]
