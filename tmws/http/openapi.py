"""The OpenAPI 3.1 document, generated from the route table and its msgspec types."""

from __future__ import annotations

import functools
import re
from typing import Any, Final

import msgspec

from tmws._version import __version__
from tmws.http.asgi import ErrorBody
from tmws.http.routes import ROUTES
from tmws.http.schemas import Readiness

__all__ = ["openapi_document", "openapi_schema"]

_REF: Final = "#/components/schemas/{name}"
_REASONS: Final = {
    400: "Malformed JSON or empty body", 401: "Missing, invalid or expired token",
    403: "The token lacks the scope or the namespace", 404: "Not found",
    405: "Method not allowed", 409: "Conflict", 413: "Body or query too large",
    415: "Body is not application/json", 422: "Validation failed (the field is named)",
    429: "Rate limit exceeded (see Retry-After)", 503: "A dependency is unavailable",
    504: "The pattern timed out",
}
_PARAM: Final = re.compile(r"{(\w+)}")


def openapi_schema() -> dict[str, Any]:
    """The document as a mapping."""
    types: list[Any] = [ErrorBody]
    for route in ROUTES:
        types.extend(t for t in (route.request_type, route.response_type) if t is not None)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    error_ref = by_type[ErrorBody]
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.endpoint.__name__}",
            "tags": [route.path.split("/")[3] if route.path.startswith("/api/") else "ops"],
        }
        parameters = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": 1} if name == "id" else
             {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}}
            for name in _PARAM.findall(route.path)]
        parameters += [{"name": name, "in": "query", "required": False, "description": text,
                        "schema": {"type": "string", "enum": list(values)} if values else
                        {"type": "string"}} for name, text, values in route.query]
        if parameters:
            operation["parameters"] = parameters
        if route.request_type is not None:
            operation["requestBody"] = {"required": route.body_required, "content": {
                "application/json": {"schema": by_type[route.request_type]}}}
        schema = (by_type[route.response_type] if route.response_type is not None
                  else {"type": "string"})
        ok: dict[str, Any] = {"description": "OK" if route.status == 200 else "Created",
                              "content": {route.content_type: {"schema": schema}}}
        if route.response_headers:
            ok["headers"] = {name: {"description": text, "schema": {"type": kind}}
                             for name, kind, text in route.response_headers}
        responses: dict[str, Any] = {str(route.status): ok}
        errors = set(route.errors)
        if route.scope is not None:
            errors |= {401, 403}
            operation["security"] = [{"bearer": [route.scope] if route.scope else []}]
        else:
            operation["security"] = []
        if route.rate_limited:
            errors.add(429)
        for status in sorted(errors):
            schema = error_ref
            if status == 503 and route.response_type is Readiness:
                # Not ready: the same report with ready=false (an error body only while
                # the service is starting or stopping).
                schema = {"anyOf": [by_type[Readiness], error_ref]}
            responses[str(status)] = {"description": _REASONS[status], "content": {
                "application/json": {"schema": schema}}}
        operation["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "tmws", "version": __version__,
                 "description": "Pattern execution service for LLM-agent systems."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "HS256 token from `tmws token create`; required when "
                               "TMWS_AUTH_ENABLED=true."}},
        },
    }


@functools.cache
def openapi_document() -> bytes:
    """The document as JSON, built once per process."""
    return msgspec.json.encode(openapi_schema())
