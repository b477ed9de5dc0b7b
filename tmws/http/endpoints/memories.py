"""Memories over HTTP: store, read, delete, search — always inside the caller's namespace."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import msgspec

from tmws.errors import InvalidRequestError
from tmws.http.asgi import HTTPError, Request, Response
from tmws.http.endpoints._common import actor, decode, encoder, namespace_for
from tmws.http.schemas import DeletedMemory, MemoryCreate, MemoryList, MemorySearch
from tmws.inputs import memory_id
from tmws.memory import MemoryRecord, MemoryStore
from tmws.models import PatternType

if TYPE_CHECKING:
    from tmws.engine import PatternExecutionEngine

__all__ = ["create_memory", "delete_memory", "get_memory", "search_memories"]

_create_decoder: Final = msgspec.json.Decoder(MemoryCreate)
_search_decoder: Final = msgspec.json.Decoder(MemorySearch)


def _memory_id(request: Request) -> int:
    try:
        return memory_id(request.path_params["id"])
    except InvalidRequestError as exc:
        raise HTTPError(422, "validation_error", str(exc)) from None


def _not_found(memory_id: int) -> HTTPError:
    # The same answer whether the memory is missing or another namespace's private one:
    # existence itself is private.
    return HTTPError(404, "memory_not_found", f"no memory {memory_id} visible to this namespace")


async def create_memory(engine: PatternExecutionEngine, request: Request) -> Response:
    body = decode(_create_decoder, await request.json_body())
    namespace = namespace_for(request, body.namespace, "`$.namespace`")
    try:
        record = await engine.store_memory(namespace, body, actor=actor(request, namespace))
    except InvalidRequestError as exc:
        raise HTTPError(422, "invalid_memory", str(exc)) from None
    return Response(201, encoder.encode(record),
                    [(b"location", f"/api/v1/memories/{record.id}".encode())])


async def get_memory(engine: PatternExecutionEngine, request: Request) -> Response:
    wanted = _memory_id(request)
    namespace = namespace_for(request, request.query_params().get("namespace"), "`?namespace`")
    async with engine.admitted(PatternType.MEMORY, "GET /memories/{id}"):
        record = await engine.memory.get(namespace, wanted, full=True)
    if record is None:
        raise _not_found(wanted)
    return Response(200, encoder.encode(record))


async def delete_memory(engine: PatternExecutionEngine, request: Request) -> Response:
    wanted = _memory_id(request)
    namespace = namespace_for(request, request.query_params().get("namespace"), "`?namespace`")
    if not await engine.delete_memory(namespace, wanted, actor=actor(request, namespace)):
        raise HTTPError(404, "memory_not_found",
                        f"no memory {wanted} owned by this namespace (only the owner "
                        "deletes, shared or not)")
    return Response(200, encoder.encode(DeletedMemory(wanted)))


async def search_memories(engine: PatternExecutionEngine, request: Request) -> Response:
    body = decode(_search_decoder, await request.json_body())
    namespace = namespace_for(request, body.namespace, "`$.namespace`")
    async with engine.admitted(PatternType.MEMORY, "POST /memories/search"):
        results = await _search(engine.memory, namespace, body)
    return Response(200, encoder.encode(MemoryList(results, len(results))))


async def _search(store: MemoryStore, namespace: str, body: MemorySearch) -> list[MemoryRecord]:
    limit = body.limit
    if body.query is not None and body.query.strip():
        if body.method == "vector":
            return await store.similar(namespace, body.query, limit=limit)
        return await store.search(namespace, body.query, limit=limit)
    if body.tags:
        return await store.by_tag(namespace, body.tags, limit=limit)
    if body.min_importance is not None:
        return await store.by_importance(namespace, min_importance=body.min_importance,
                                         limit=limit)
    return await store.recent(namespace, limit=limit, days=body.days)
