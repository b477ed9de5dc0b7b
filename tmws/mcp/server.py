"""tmws as an MCP server (the SDK's low-level ``Server``): tools, resources, errors, metrics.

Every call acts as one :class:`~tmws.auth.Principal` — the bearer token's over HTTP, the one
``tmws mcp`` was started with over stdio — whose namespace is the only one it sees and
whose scopes decide which tools it may list and call. A failure is a tool error
(``isError``) whose structured content is the HTTP API's error body: the same stable code
and message ``POST /api/v1/...`` would answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import mcp_types as types
import msgspec
from mcp.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types.jsonrpc import INVALID_PARAMS

from tmws._version import __version__
from tmws.auth import Principal
from tmws.errors import (
    EmbeddingError,
    InvalidRequestError,
    PatternError,
    PatternExistsError,
    PermissionDeniedError,
)
from tmws.evaluation import labelled
from tmws.http.asgi import ErrorBody, HTTPError
from tmws.http.endpoints._common import check_query, decode
from tmws.http.failure import failure
from tmws.http.schemas import (
    EvaluationRequest,
    ExecuteRequest,
    PatternList,
    PatternRegistration,
    PatternReload,
    PatternReloadRequest,
    RouteRequest,
)
from tmws.inputs import MemoryInput
from tmws.mcp._metrics import TOOL_CALLS, TOOL_DURATION, TOOL_ERRORS
from tmws.mcp.tools import TOOLS, ListPatternsArgs, MemoryIdArgs, RecallArgs, Tool, input_schema
from tmws.memory import MemoryRecord
from tmws.models import PatternType

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["PATTERNS_URI", "RECENT_TEMPLATE", "ToolFailure", "ToolHandler", "create_server",
           "tool_handler"]

PATTERNS_URI: Final = "tmws://patterns"
RECENT_TEMPLATE: Final = "tmws://memories/{namespace}/recent"
_RECENT_PREFIX: Final = "tmws://memories/"
_RECENT_LIMIT: Final = 20
RESOURCE_NOT_FOUND: Final = -32002  # the MCP specification's code for an unknown resource
_INSTRUCTIONS: Final = (
    "tmws routes natural-language queries to patterns and keeps memories per namespace. "
    "Use execute for questions, store_memory / recall_memories for long-term memory, and "
    "explain_route to see where a query would go. Errors carry a stable code.")

EngineSource = Callable[[], "PatternExecutionEngine | None"]
PrincipalSource = Callable[[], Principal]
_Run = Callable[["PatternExecutionEngine", Principal, Any], Awaitable[tuple[Any, str]]]

_encoder: Final = msgspec.json.Encoder()
_decoders: Final = {tool.name: msgspec.json.Decoder(tool.arguments) for tool in TOOLS}
_BY_NAME: Final = {tool.name: tool for tool in TOOLS}


class ToolFailure(Exception):
    """A tool error with its stable code (and, for a failed execution, the result)."""

    def __init__(self, code: str, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.result = result


def _namespace(principal: Principal, requested: Any) -> str:
    if requested is not None and requested != principal.namespace:
        raise PermissionDeniedError(
            "namespace_forbidden",
            f"this token acts for namespace {principal.namespace!r}, not {requested!r}; "
            "mint a token for that namespace")
    return principal.namespace


async def _execute(engine: PatternExecutionEngine, principal: Principal,
                   body: ExecuteRequest) -> tuple[Any, str]:
    check_query(engine, body.query)
    context = body.context
    namespace = _namespace(principal, context.get("namespace") if context else None)
    context = {**(context or {}), "namespace": namespace}

    def authorize(scopes: frozenset[str]) -> None:
        for scope in sorted(scopes):
            principal.require(scope)

    result = await engine.execute(body.query, body.execution_mode, context, body.use_cache,
                                  authorize=authorize)
    code = result.error_code
    if code is not None and code.status != 200:
        raise ToolFailure(code.value, result.error or "", result)
    outcome = "succeeded" if result.success else f"failed ({code.value if code else 'error'})"
    answered_by = result.pattern_name or result.metadata.get("pattern_type") or "no pattern"
    return result, (f"{answered_by} {outcome} in "
                    f"{result.execution_time_ms:.1f} ms"
                    f"{' (cached)' if result.cache_hit else ''}")


async def _explain(engine: PatternExecutionEngine, principal: Principal,
                   body: RouteRequest) -> tuple[Any, str]:
    check_query(engine, body.query)
    context = body.context
    namespace = _namespace(principal, context.get("namespace") if context else None)
    mode = body.execution_mode or engine.settings.pattern_default_mode
    decision = await engine.router.route(body.query.strip(), mode,
                                         {**(context or {}), "namespace": namespace})
    target = decision.pattern_name or decision.pattern_type.value
    return decision, (f"would go to {target} ({decision.decided_by}, confidence "
                      f"{decision.confidence:.2f})" if not decision.abstained
                      else "no pattern would answer (abstained)")


async def _store(engine: PatternExecutionEngine, principal: Principal,
                 body: MemoryInput) -> tuple[Any, str]:
    try:
        record = await engine.store_memory(principal.namespace, body,
                                           actor=principal.namespace)
    except InvalidRequestError as exc:
        raise ToolFailure("invalid_memory", str(exc)) from None
    return record, f"stored memory {record.id} in {record.namespace}"


def _keep(record: MemoryRecord, body: RecallArgs, since: datetime | None) -> bool:
    if body.tags and not {t.strip().lower() for t in body.tags} <= set(record.tags):
        return False
    if body.min_importance is not None and record.importance < body.min_importance:
        return False
    return since is None or record.created_at >= since


async def _recall(engine: PatternExecutionEngine, principal: Principal,
                  body: RecallArgs) -> tuple[Any, str]:
    namespace = principal.namespace
    store = engine.memory
    limit = body.limit
    async with engine.admitted(PatternType.MEMORY, "mcp recall_memories"):
        if body.query is not None and body.query.strip():
            if body.method == "vector":
                found = await store.similar(namespace, body.query, limit=limit)
            else:
                found = await store.search(namespace, body.query, limit=limit)
        elif body.tags:
            found = await store.by_tag(namespace, body.tags, limit=limit)
        elif body.min_importance is not None:
            found = await store.by_importance(namespace, min_importance=body.min_importance,
                                              limit=limit)
        else:
            found = await store.recent(namespace, limit=limit, days=body.days)
    # The store filters by one criterion; the others given apply to what it found.
    since = (datetime.now(UTC) - timedelta(days=body.days)) if body.days else None
    results = [record for record in found if _keep(record, body, since)]
    return {"results": results, "count": len(results)}, f"{len(results)} memories"


async def _get(engine: PatternExecutionEngine, principal: Principal,
               body: MemoryIdArgs) -> tuple[Any, str]:
    async with engine.admitted(PatternType.MEMORY, "mcp get_memory"):
        record = await engine.memory.get(principal.namespace, body.id, full=True)
    if record is None:
        raise ToolFailure("memory_not_found",
                          f"no memory {body.id} visible to this namespace")
    return record, f"memory {record.id} ({record.memory_type}, {len(record.content)} chars)"


async def _delete(engine: PatternExecutionEngine, principal: Principal,
                  body: MemoryIdArgs) -> tuple[Any, str]:
    if not await engine.delete_memory(principal.namespace, body.id,
                                      actor=principal.namespace):
        raise ToolFailure("memory_not_found",
                          f"no memory {body.id} owned by this namespace (only the owner "
                          "deletes, shared or not)")
    return {"deleted": body.id}, f"deleted memory {body.id}"


def _pattern_list(engine: PatternExecutionEngine,
                  pattern_type: PatternType | None) -> PatternList:
    registry = engine.registry
    patterns = registry.patterns(pattern_type)
    return PatternList(patterns, len(patterns), registry.fingerprint, registry.shared_version)


async def _list(engine: PatternExecutionEngine, principal: Principal,
                body: ListPatternsArgs) -> tuple[Any, str]:
    listed = _pattern_list(engine, body.pattern_type)
    return listed, f"{listed.count} patterns: " + ", ".join(p.name for p in listed.patterns)


async def _register(engine: PatternExecutionEngine, principal: Principal,
                    body: PatternRegistration) -> tuple[Any, str]:
    config = msgspec.structs.asdict(body)
    replace = config.pop("replace")
    try:
        change = await engine.register_pattern(config, replace=replace,
                                               actor=principal.namespace)
    except PatternExistsError as exc:
        raise ToolFailure("pattern_exists", str(exc)) from None
    except PatternError as exc:
        raise ToolFailure("invalid_pattern", str(exc)) from None
    assert change.pattern is not None
    return change.pattern, (f"registered {change.pattern.name} (set version "
                            f"{change.propagation.version})")


async def _reload(engine: PatternExecutionEngine, principal: Principal,
                  body: PatternReloadRequest) -> tuple[Any, str]:
    try:
        change = await engine.reload_patterns(allow_empty=body.allow_empty or None,
                                              actor=principal.namespace)
    except PatternError as exc:
        raise ToolFailure("invalid_pattern_file",
                          f"{exc}; the previous pattern set is still in use") from None
    reloaded = PatternReload(change.patterns, change.propagation.fingerprint,
                             engine.library.source, change.propagation.version,
                             change.propagation)
    return reloaded, f"reloaded {change.patterns} patterns from {engine.library.source}"


async def _evaluate(engine: PatternExecutionEngine, principal: Principal,
                    body: EvaluationRequest) -> tuple[Any, str]:
    try:
        items = [labelled(item.expected, item.query.strip(), position, engine.registry,
                          where=f"`$.labelled[{position}].expected`: ")
                 for position, item in enumerate(body.labelled)]
    except InvalidRequestError as exc:
        raise ToolFailure("unknown_label", str(exc)) from None
    try:
        report = await engine.evaluate(items, mode=body.execution_mode,
                                       min_score=body.min_score, min_margin=body.min_margin)
    except EmbeddingError as exc:
        raise ToolFailure("embedding_unavailable", str(exc)) from None
    return report, f"accuracy {report.accuracy:.3f} over {len(items)} queries"


_RUN: Final[dict[str, _Run]] = {
    "execute": _execute, "explain_route": _explain, "store_memory": _store,
    "recall_memories": _recall, "get_memory": _get, "delete_memory": _delete,
    "list_patterns": _list, "register_pattern": _register, "reload_patterns": _reload,
    "evaluate_patterns": _evaluate,
}


def _error(exc: Exception, tool: str) -> tuple[str, str, Any]:
    """Code, message and failed result of an exception, as the HTTP API names them."""
    if isinstance(exc, ToolFailure):
        return exc.code, exc.message, exc.result
    if isinstance(exc, HTTPError):
        return exc.code, exc.message, None
    _, body, _ = failure(exc, f"mcp:{tool}")
    error = msgspec.json.decode(body, type=ErrorBody).error
    return error.code, error.message, None


def _text(text: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=text)]


def _tool(tool: Tool) -> types.Tool:
    return types.Tool(
        name=tool.name, description=tool.description, input_schema=input_schema(tool.arguments),
        annotations=types.ToolAnnotations(read_only_hint=tool.read_only,
                                          destructive_hint=tool.destructive,
                                          open_world_hint=False))


_TOOL_DEFINITIONS: Final = {tool.name: _tool(tool) for tool in TOOLS}


def _ready(engine_source: EngineSource) -> PatternExecutionEngine:
    engine = engine_source()
    if engine is None:
        raise ToolFailure("not_ready", "the service is starting or stopping")
    return engine


ToolHandler = Callable[[Any, types.CallToolRequestParams], Awaitable[types.CallToolResult]]


def tool_handler(engine_source: EngineSource, principal_source: PrincipalSource) -> ToolHandler:
    """The ``tools/call`` handler: the server's, and the one ``/mcp`` answers a
    handshake-era call with in its own task (:mod:`tmws.mcp.http`)."""

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        name = params.name
        tool = _BY_NAME.get(name)
        label = name if tool is not None else "unknown"
        started = time.perf_counter()
        TOOL_CALLS.labels(label).inc()
        try:
            if tool is None:
                raise ToolFailure("unknown_tool", f"no tool named {name[:80]!r}; tools/list "
                                  "lists the ones this token may call")
            principal = principal_source()
            principal.require(tool.scope)
            engine = _ready(engine_source)
            body = decode(_decoders[name], _encoder.encode(params.arguments or {}))
            value, summary = await _RUN[name](engine, principal, body)
            return types.CallToolResult(content=_text(summary),
                                        structured_content=msgspec.to_builtins(value))
        except Exception as exc:
            code, message, result = _error(exc, label)
            TOOL_ERRORS.labels(label, code).inc()
            error: dict[str, Any] = {"error": {"code": code, "message": message}}
            if result is not None:
                error["result"] = msgspec.to_builtins(result)
            return types.CallToolResult(content=_text(f"{code}: {message}"),
                                        structured_content=error, is_error=True)
        finally:
            TOOL_DURATION.labels(label).observe(time.perf_counter() - started)

    return call_tool


def create_server(engine_source: EngineSource,
                  principal_source: PrincipalSource) -> Server[Any]:
    """An MCP server over the engine ``engine_source`` gives (None: not ready yet), acting
    for the principal ``principal_source`` gives at each call."""

    def ready() -> PatternExecutionEngine:
        return _ready(engine_source)

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        scopes = principal_source().scopes
        return types.ListToolsResult(tools=[_TOOL_DEFINITIONS[tool.name] for tool in TOOLS
                                            if tool.scope in scopes])

    call_tool = tool_handler(engine_source, principal_source)

    async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[types.Resource(
            name="patterns", uri=PATTERNS_URI, mime_type="application/json",
            description="The pattern library: every registered pattern, its trigger and "
                        "examples.")])

    async def list_templates(ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[types.ResourceTemplate(
            name="recent_memories", uri_template=RECENT_TEMPLATE,
            mime_type="application/json",
            description=f"The {_RECENT_LIMIT} most recent memories of a namespace (only the "
                        "caller's own namespace may be read).")])

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams
                            ) -> types.ReadResourceResult:
        uri = str(params.uri)
        try:
            return await _read(uri)
        except Exception as exc:
            # Not a tool: a JSON-RPC error, carrying the same code and message.
            code, message, _ = _error(exc, "resource")
            kind = RESOURCE_NOT_FOUND if code == "resource_not_found" else INVALID_PARAMS
            raise MCPError(kind, f"{code}: {message}", {"code": code, "message": message}
                           ) from None

    async def _read(uri: str) -> types.ReadResourceResult:
        principal = principal_source()
        engine = ready()
        if uri == PATTERNS_URI:
            principal.require("execute")
            value: Any = _pattern_list(engine, None)
        elif uri.startswith(_RECENT_PREFIX) and uri.endswith("/recent"):
            principal.require("memories:read")
            namespace = _namespace(principal, uri[len(_RECENT_PREFIX):-len("/recent")])
            async with engine.admitted(PatternType.MEMORY, "mcp recent memories"):
                value = await engine.memory.recent(namespace, limit=_RECENT_LIMIT)
        else:
            raise ToolFailure("resource_not_found", f"no resource {uri[:200]!r}")
        return types.ReadResourceResult(contents=[types.TextResourceContents(
            uri=uri, mime_type="application/json", text=_encoder.encode(value).decode())])

    return Server("tmws", version=__version__, instructions=_INSTRUCTIONS,
                  on_list_tools=list_tools, on_call_tool=call_tool,
                  on_list_resources=list_resources,
                  on_list_resource_templates=list_templates, on_read_resource=read_resource)
