"""Memories over HTTP: store, read, delete, search — always inside the caller's namespace."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from tmws.endpoints._common import actor, decode, encoder, namespace_for
from tmws.errors import InvalidRequestError
from tmws.http import HTTPError, Request, Response
from tmws.schemas import DeletedMemory, MemoryCreate, MemoryList, MemorySearch

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["create_memory", "delete_memory", "get_memory", "search_memories"]

_create_decoder: Final = msgspec.json.Decoder(MemoryCreate)
_search_decoder: Final = msgspec.json.Decoder(MemorySearch)
_MAX_ID: Final = 2**63 - 1


def _memory_id(request: Request) -> int:
    raw = request.path_params["id"]
    if not raw.isdigit() or int(raw) > _MAX_ID:
        raise HTTPError(422, "validation_error",
                        f"memory id must be a positive integer (got {raw[:40]!r}) - at `{{id}}`")
    return int(raw)


def _not_found(memory_id: int) -> HTTPError:
    # The same answer whether the memory is missing or another namespace's private one:
    # existence itself is private.
    return HTTPError(404, "memory_not_found", f"no memory {memory_id} visible to this namespace")


async def create_memory(engine: PatternExecutionEngine, request: Request) -> Response:
    body = decode(_create_decoder, await request.json_body())
    namespace = namespace_for(request, body.namespace)
    try:
        memory_id = await engine.memory.store(
            namespace, body.content, memory_type=body.memory_type, importance=body.importance,
            tags=body.tags, metadata=body.metadata, visibility=body.visibility)
    except InvalidRequestError as exc:
        raise HTTPError(422, "invalid_memory", str(exc)) from None
    engine.audit.record(actor(request, namespace), "memory.store", target=str(memory_id),
                        outcome="success", detail={"visibility": body.visibility})
    record = await engine.memory.get(namespace, memory_id, full=True)
    return Response(201, encoder.encode(record),
                    [(b"location", f"/api/v1/memories/{memory_id}".encode())])


async def get_memory(engine: PatternExecutionEngine, request: Request) -> Response:
    memory_id = _memory_id(request)
    namespace = namespace_for(request, request.query_params().get("namespace"))
    record = await engine.memory.get(namespace, memory_id, full=True)
    if record is None:
        raise _not_found(memory_id)
    return Response(200, encoder.encode(record))


async def delete_memory(engine: PatternExecutionEngine, request: Request) -> Response:
    memory_id = _memory_id(request)
    namespace = namespace_for(request, request.query_params().get("namespace"))
    deleted = await engine.memory.delete(namespace, memory_id)
    engine.audit.record(actor(request, namespace), "memory.delete", target=str(memory_id),
                        outcome="success" if deleted else "not_found")
    if not deleted:
        raise HTTPError(404, "memory_not_found",
                        f"no memory {memory_id} owned by this namespace (only the owner "
                        "deletes, shared or not)")
    return Response(200, encoder.encode(DeletedMemory(memory_id)))


async def search_memories(engine: PatternExecutionEngine, request: Request) -> Response:
    body = decode(_search_decoder, await request.json_body())
    namespace = namespace_for(request, body.namespace)
    store, limit = engine.memory, body.limit
    if body.query is not None and body.query.strip():
        if body.method == "vector":
            results = await store.similar(namespace, body.query, limit=limit)
        else:
            results = await store.search(namespace, body.query, limit=limit)
    elif body.tags:
        results = await store.by_tag(namespace, body.tags, limit=limit)
    elif body.min_importance is not None:
        results = await store.by_importance(namespace, min_importance=body.min_importance,
                                            limit=limit)
    else:
        results = await store.recent(namespace, limit=limit, days=body.days)
    return Response(200, encoder.encode(MemoryList(results, len(results))))
