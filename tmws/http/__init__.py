"""The HTTP layer: everything between Granian and the engine.

=================  ==========================================================================
``app``            the ASGI application (lifespan, request ids, error answers); Granian's entry
``asgi``           ASGI plumbing: scope/receive/send types, ``Request``, ``Response``, errors
``dispatch``       ``Route`` and the ``Dispatcher`` resolving (method, path) to a route
``routes``         the route table: every operation, its scope and types
``guards``         authentication, scopes and rate limits run before an endpoint
``schemas``        request and response bodies (msgspec)
``openapi``        /openapi.json, generated from the route table
``endpoints``      one module per resource: decode, call the engine, encode
=================  ==========================================================================

Nothing outside this package imports it except the server (``tmws.http.app:create_app``).
"""

__all__: list[str] = []
