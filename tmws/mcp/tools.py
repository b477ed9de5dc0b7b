"""The MCP tools: name, description, the scope a token needs, and the argument type.

Arguments are the HTTP API's msgspec types wherever the HTTP body is the same thing, so a
tool's JSON schema (``msgspec.json.schema``) and its limits cannot drift from the API's.
Where the HTTP body carries a ``namespace`` (auth off), the tool's does not: over MCP the
namespace is always the caller's (the token's subject, or ``tmws mcp --namespace``).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, NamedTuple

import msgspec

from tmws.http.schemas import (
    EvaluationRequest,
    ExecuteRequest,
    PatternRegistration,
    PatternReloadRequest,
    RouteRequest,
)
from tmws.inputs import MAX_MEMORY_ID, Days, Importance, Limit, MemoryInput, SearchText, Tag
from tmws.models import PatternType

__all__ = ["TOOLS", "ListPatternsArgs", "MemoryIdArgs", "RecallArgs", "Tool", "input_schema"]


class RecallArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Arguments of ``recall_memories``: every filter given applies."""

    query: Annotated[SearchText, msgspec.Meta(
        description="Words to search for (hybrid full text + vectors, best first). Without "
                    "it: the most recent memories.")] | None = None
    method: Annotated[str, msgspec.Meta(
        pattern="^(hybrid|vector)$",
        description="With query: hybrid (default) or vector (nearest embeddings only).")] \
        = "hybrid"
    tags: Annotated[list[Tag], msgspec.Meta(
        max_length=64, description="Only memories carrying all of these tags.")] | None = None
    min_importance: Annotated[Importance, msgspec.Meta(
        description="Only memories at least this important (0..1).")] | None = None
    days: Annotated[Days, msgspec.Meta(
        description="Only memories stored within this many days.")] | None = None
    limit: Annotated[Limit, msgspec.Meta(description="At most this many (1..100).")] = 10


MemoryId = Annotated[int, msgspec.Meta(ge=1, le=MAX_MEMORY_ID, description="A memory's id.")]


class MemoryIdArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Arguments of ``get_memory`` and ``delete_memory``."""

    id: MemoryId


class ListPatternsArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Arguments of ``list_patterns``."""

    pattern_type: Annotated[PatternType, msgspec.Meta(
        description="Only patterns of this type.")] | None = None


class Tool(NamedTuple):
    name: str
    description: str
    scope: str  # tmws.auth.SCOPES
    arguments: Any  # msgspec struct type
    read_only: bool
    destructive: bool = False


TOOLS: Final = (
    Tool("execute",
         "Route a natural-language query to the best tmws pattern and run it (infrastructure "
         "status, memory recall or storage, hybrid analysis). execution_mode trades depth for "
         "speed: fast, balanced or comprehensive. context may carry handler fields (e.g. "
         "content and tags for a query that stores a memory). Answers the execution result.",
         "execute", ExecuteRequest, read_only=False),
    Tool("explain_route",
         "Explain which pattern a query would be routed to, with confidence and reasoning, "
         "without executing anything.", "execute", RouteRequest, read_only=True),
    Tool("store_memory",
         "Store a memory (content, memory_type, importance 0..1, tags, metadata, visibility "
         "private or shared) in the caller's namespace. Answers the stored record with its id.",
         "memories:write", MemoryInput, read_only=False),
    Tool("recall_memories",
         "Search the memories the caller can read (its own and shared ones): by query words, "
         "tags, minimum importance and age in days, best or newest first.",
         "memories:read", RecallArgs, read_only=True),
    Tool("get_memory", "Read one memory by id, with its whole content.", "memories:read",
         MemoryIdArgs, read_only=True),
    Tool("delete_memory", "Delete a memory the caller owns, by id.", "memories:write",
         MemoryIdArgs, read_only=False, destructive=True),
    Tool("list_patterns",
         "List the registered patterns (name, type, trigger regex, examples, cost).",
         "execute", ListPatternsArgs, read_only=True),
    Tool("register_pattern",
         "Admin: register (or, with replace, replace) a pattern for every instance. The "
         "trigger regex is compiled first; nothing changes on error.",
         "patterns:admin", PatternRegistration, read_only=False),
    Tool("reload_patterns",
         "Admin: re-read the pattern file (TMWS_PATTERN_CONFIG) and make it the whole set.",
         "patterns:admin", PatternReloadRequest, read_only=False, destructive=True),
    Tool("evaluate_patterns",
         "Admin: route labelled queries (nothing runs) and report routing accuracy, "
         "precision/recall, abstentions and confusions.",
         "patterns:admin", EvaluationRequest, read_only=True),
)


def input_schema(arguments: Any) -> dict[str, Any]:
    """The JSON schema of an argument struct as MCP wants it: an object at the top, its
    nested definitions under ``$defs`` (msgspec's references point there)."""
    schema = msgspec.json.schema(arguments)
    defs: dict[str, Any] = dict(schema.get("$defs", {}))
    name = schema["$ref"].rsplit("/", 1)[1]
    root: dict[str, Any] = dict(defs.pop(name))
    if defs:
        root["$defs"] = defs
    return root
