"""Pure-ASGI middleware wrapped around the tmws app."""

from tmws.middleware.request_id import RequestIdMiddleware

__all__ = ["RequestIdMiddleware"]
