"""What every endpoint shares: body decoding, query limits, the caller's namespace."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec

from tmws.errors import InvalidRequestError, PermissionDeniedError
from tmws.http.asgi import HTTPError, Request
from tmws.inputs import DEFAULT_NAMESPACE, check_namespace, explain
from tmws.models import ExecutionMode

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["actor", "check_query", "decode", "encoder", "namespace_for"]

T = TypeVar("T")

encoder: Final = msgspec.json.Encoder()
_MODES: Final = ", ".join(m.value for m in ExecutionMode)


def decode(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """A typed body, or 400 (not JSON) / 422 (wrong shape, with the field's JSON path)."""
    if not body.strip():
        raise HTTPError(400, "empty_body", "the request body is empty; send a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.endswith("`$.execution_mode`"):
            raise HTTPError(422, "unknown_mode", f"unknown execution_mode; use one of: {_MODES}"
                            " - at `$.execution_mode`") from None
        if message.endswith("`$.query`") and "length >= 1" in message:  # schema min_length
            raise HTTPError(422, "empty_query", "query is empty - at `$.query`") from None
        raise HTTPError(422, "validation_error", explain(exc)) from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def check_query(engine: PatternExecutionEngine, query: str) -> None:
    if not query.strip():
        raise HTTPError(422, "empty_query", "query is empty - at `$.query`")
    limit = engine.settings.max_query_length
    if len(query) > limit:
        raise HTTPError(413, "query_too_long",
                        f"query is {len(query)} characters; the limit is {limit} "
                        "(TMWS_MAX_QUERY_LENGTH)")


def namespace_for(request: Request, requested: Any, where: str) -> str:
    """The namespace this request acts in (``where`` names the field that asked for one).

    With auth on it is the token's subject, and asking for another one is refused; with
    auth off the request names it (default: ``default``), by the one namespace rule.
    """
    principal = request.principal
    if principal is None:
        if requested is None:
            return DEFAULT_NAMESPACE
        try:
            return check_namespace(requested, where)
        except InvalidRequestError as exc:
            raise HTTPError(422, "invalid_request", str(exc)) from None
    if requested is not None and requested != principal.namespace:
        raise PermissionDeniedError(
            "namespace_forbidden",
            f"this token acts for namespace {principal.namespace!r}, not {requested!r}; "
            "mint a token for that namespace")
    namespace: str = principal.namespace
    return namespace


def actor(request: Request, namespace: str | None = None) -> str:
    """Who to name in audit records."""
    principal = request.principal
    if principal is not None:
        name: str = principal.namespace
        return name
    return namespace or DEFAULT_NAMESPACE
