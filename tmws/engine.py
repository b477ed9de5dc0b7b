"""The pattern execution engine: route, check the cache, run the handler, account for it."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from types import TracebackType
from typing import Any, Final, NamedTuple

import msgspec

from tmws._example_vectors import example_vectors_for
from tmws._native import cache_key, normalize_query
from tmws._pattern_sync import PatternSets, Propagation, StoredSet
from tmws._version import __version__
from tmws.admission import Admission
from tmws.audit import SYSTEM_ACTOR, AuditLog, ConstantDetail
from tmws.cache import BASE_LOCAL_SIZE, CacheManager, Generation
from tmws.config import Settings
from tmws.database import (
    Budget,
    Database,
    DatabaseServer,
    check_embedding_config,
    database_fence,
    open_server,
    request_budget,
)
from tmws.embeddings import EmbeddingProvider, create_provider
from tmws.errors import (
    DatabaseError,
    ErrorCode,
    HealthCheckFailed,
    InvalidRequestError,
    OverloadedError,
    PatternConfigError,
    PatternError,
    PatternExistsError,
    PatternNotFoundError,
    RedisUnavailable,
    TmwsError,
)
from tmws.evaluation import Evaluation, Labelled, evaluate
from tmws.handlers import (
    HANDLERS,
    PURE,
    BoundHandler,
    Capabilities,
    Handler,
    HandlerContext,
    check_pattern_handler,
    delegate_to_caller,
    resolve_handler,
)
from tmws.inputs import ExecutionContext, MemoryInput, check_depth, check_metadata, convert
from tmws.memory import MemoryRecord, MemoryStore
from tmws.metrics import ExecutionMetrics
from tmws.models import (
    ExecutionMode,
    ExecutionResult,
    PatternDefinition,
    PatternType,
    RoutingDecision,
)
from tmws.patterns import PatternLibrary, default_library_path, load_pattern_file
from tmws.registry import PatternRegistry, fingerprint_of
from tmws.router import HybridRouter
from tmws.verify import VerificationReport, verify_engine

__all__ = ["Authorize", "PatternChange", "PatternExecutionEngine",
           "create_pattern_execution_engine", "require_patterns"]

logger = logging.getLogger("tmws.engine")

_LATENCY_WINDOW: Final = 2048  # executions per type kept for the percentiles
_MIN_LATENCY_SAMPLES: Final = 100


def _nearest_rank(ordered: Sequence[float], quantile: str) -> float | None:
    if not ordered:
        return None
    rank = math.ceil(int(quantile[1:]) / 100 * len(ordered))
    return round(ordered[max(rank, 1) - 1], 3)


# Context keys that only say who is asking; everything else may change the answer.
_IDENTITY_KEYS: Final = frozenset({"namespace", "request_id"})


# authorize(scopes): raise to refuse an execution that needs these token scopes (beyond
# execute), derived from what its handler declares it does (tmws.handlers.Capabilities).
Authorize = Callable[[frozenset[str]], None]
_READS_MEMORY: Final = frozenset({"memories:read"})


class PatternChange(msgspec.Struct, frozen=True, kw_only=True):
    """What a pattern change did: ``pattern`` is the registered or removed one (None for a
    reload), ``patterns`` the size of the new set, ``propagation`` how far it has reached."""

    action: str
    target: str
    patterns: int
    propagation: Propagation
    pattern: PatternDefinition | None = None


class _Slot(NamedTuple):
    key: str
    generation: Generation | None  # memory generations the lookup saw, for the put
    hit: ExecutionResult | None


class _Counters:
    __slots__ = ("cache_hits", "failed", "successful", "time_ms", "tokens", "tokens_saved",
                 "total")

    def __init__(self) -> None:
        self.total = self.successful = self.failed = self.cache_hits = 0
        self.tokens = self.tokens_saved = 0
        self.time_ms = 0.0


class PatternExecutionEngine:
    """Executes queries against a pattern library.

    Build one with :func:`create_pattern_execution_engine`; close it with ``await
    engine.close()`` (or use it as an async context manager).
    """

    def __init__(self, settings: Settings, library: PatternLibrary, database: Database,
                 *, server: DatabaseServer | None = None,
                 cache: CacheManager | None = None,
                 handlers: Mapping[str, Handler] | None = None,
                 provider: EmbeddingProvider | None = None) -> None:
        self.settings = settings
        self.handlers: dict[str, BoundHandler] = {
            **HANDLERS, **{name: BoundHandler(run, PURE) for name, run in (handlers or {}).items()}}
        self._check_patterns(library.patterns, library.source)
        self.library = library
        self.database = database
        self._owns_cache = cache is None
        if cache is None:
            cache = cache_manager_for(settings, library)
        else:  # built by the caller (the guide's CacheManager): the file's per-type sizes
            cache.size_types(_declared_sizes(library))
        self.cache = cache
        provider = provider or create_provider(settings)
        self.memory = MemoryStore(database, provider,
                                  min_similarity=settings.recall_min_similarity,
                                  generations=self.cache, limits=settings.input_limits)
        self.registry = PatternRegistry(library.patterns, limits=settings.pattern_limits)
        self.router = HybridRouter(self.registry,
                                   database_available=lambda: database.available,
                                   min_score=settings.router_min_score,
                                   min_margin=settings.router_min_margin,
                                   vectors=example_vectors_for(settings, self.registry,
                                                               provider))
        self._server = server  # stopped on close when this engine opened it
        self._sync: PatternSets | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._inflight: dict[str, asyncio.Future[ExecutionResult]] = {}
        self._singleflight_joins = 0
        self._unencodable = 0  # results answered but not cacheable (no msgpack form)
        self._limits = settings.input_limits
        # Executions that use memories wait for one of these, never for the pool itself.
        self.admission = Admission(settings.admission_limit, settings.admission_max_queue,
                                   adaptive=settings.admission_adaptive)
        self._counters = _Counters()
        self.metrics = ExecutionMetrics()
        self._by_type: dict[str, dict[str, int]] = {
            t.value: {"executions": 0, "failures": 0} for t in PatternType}
        # The latest execution times per type (ms), compared with the library's
        # performance_targets in get_stats().
        self._recent_ms: dict[str, deque[float]] = {
            t.value: deque(maxlen=_LATENCY_WINDOW) for t in PatternType}
        self._closed = False
        self._caching = settings.cache_enabled and settings.pattern_cache_enabled
        # Every execution is recorded in _finish, every pattern change by the operation that
        # makes it; the HTTP layer records memory changes.
        self.audit = AuditLog(database, enabled=settings.audit_enabled,
                              spill_dir=settings.audit_spill_path)

    # -- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._sync is not None:
            await self._sync.close()
        if self.router.vectors is not None:
            await self.router.vectors.aclose()
        await self.audit.close()  # its last records need the database
        await self.database.close()
        await self.memory.provider.aclose()
        if self._owns_cache:  # a caller's cache may serve other engines: theirs to close
            await self.cache.close()
        if self._server is not None:
            await self._server.stop()

    async def __aenter__(self) -> PatternExecutionEngine:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start_pattern_sync(self) -> None:
        """Join the pattern group (TMWS_PATTERN_SYNC_GROUP) in the database: adopt its set
        or publish this one's file, then follow every change (:mod:`tmws._pattern_sync`)."""
        if self._sync is not None:
            return
        sync = PatternSets(self.database, self.registry, self.settings.pattern_sync_group,
                           timeout=self.settings.pattern_sync_timeout / 1000,
                           check=lambda patterns: self._check_patterns(
                               patterns, "the shared pattern set"))
        await sync.start(actor=SYSTEM_ACTOR)
        self._sync = sync

    async def register_pattern(self, pattern: PatternDefinition | Mapping[str, Any], *,
                               replace: bool = False, actor: str = SYSTEM_ACTOR
                               ) -> PatternChange:
        """Add a pattern (or replace one of the same name) for every instance of the group;
        ``pattern`` may be a mapping as written in a pattern file.

        Refused, with nothing changed anywhere: PatternExistsError (the name is taken and
        ``replace`` is false), PatternConfigError or PatternCompileError (the pattern or its
        handler is unusable), DatabaseError (the change cannot be stored). Audited.
        """
        if not isinstance(pattern, PatternDefinition):
            name = pattern.get("name")
            try:
                pattern = PatternDefinition.from_config(pattern, source="request")
            except PatternError:
                self.audit.record(actor, "pattern.register",
                                  target=name if isinstance(name, str) else None,
                                  outcome="invalid_pattern")
                raise
        registered = pattern

        def mutate(current: StoredSet) -> tuple[list[PatternDefinition], str]:
            names = [p.name for p in current.patterns]
            if registered.name in names and not replace:
                raise PatternExistsError(registered.name)
            self._check_patterns([registered], "request")
            patterns = [registered if p.name == registered.name else p
                        for p in current.patterns]
            if registered.name not in names:
                patterns.append(registered)
            return patterns, current.base

        change = await self._change(mutate, "pattern.register", actor, registered.name,
                                    detail={"replace": replace,
                                            "pattern_type": registered.pattern_type.value})
        return msgspec.structs.replace(change, pattern=registered)

    async def unregister_pattern(self, name: str, *, actor: str = SYSTEM_ACTOR
                                 ) -> PatternChange:
        """Remove a pattern for every instance of the group (PatternNotFoundError if the
        group's set has none of that name). Audited."""
        removed: list[PatternDefinition] = []

        def mutate(current: StoredSet) -> tuple[list[PatternDefinition], str]:
            removed[:] = [p for p in current.patterns if p.name == name]
            if not removed:
                raise PatternNotFoundError(name)
            return [p for p in current.patterns if p.name != name], current.base

        change = await self._change(mutate, "pattern.delete", actor, name)
        return msgspec.structs.replace(change, pattern=removed[0])

    async def reload_patterns(self, *, allow_empty: bool | None = None,
                              actor: str = SYSTEM_ACTOR) -> PatternChange:
        """Re-read TMWS_PATTERN_CONFIG and make it the whole set of every instance of the
        group (all or nothing). A file without patterns is refused unless ``allow_empty``
        (default: TMWS_PATTERN_ALLOW_EMPTY). Audited."""
        source = self.settings.pattern_config or default_library_path()
        try:
            library = await asyncio.to_thread(load_pattern_file, source,
                                              limits=self.settings.pattern_limits)
            self._require_patterns(library, allow_empty)
            self._check_patterns(library.patterns, library.source)
        except PatternError:
            self.audit.record(actor, "pattern.reload", target=str(source),
                              outcome="invalid_pattern")
            raise
        change = await self._change(
            lambda current: (list(library.patterns), fingerprint_of(library.patterns)),
            "pattern.reload", actor, str(source))
        self.library = library
        return change

    def _require_patterns(self, library: PatternLibrary, allow_empty: bool | None) -> None:
        require_patterns(library, self.settings.pattern_allow_empty if allow_empty is None
                         else allow_empty)

    async def _change(self, mutate: Callable[[StoredSet], tuple[list[PatternDefinition], str]],
                      action: str, actor: str, target: str, *,
                      detail: dict[str, Any] | None = None) -> PatternChange:
        """Apply a change through the group (or, before start_pattern_sync, here only)."""
        try:
            if self._sync is None:
                current = StoredSet(self.registry.shared_version or 0,
                                    self.registry.fingerprint, self.registry.patterns())
                patterns, _ = mutate(current)
                prepared = self.registry.prepare(patterns)
                self.registry.install(prepared)
                propagation = Propagation(self.registry.version, prepared.fingerprint, 1, 1,
                                          True, 0.0)
            else:
                prepared, propagation = await self._sync.change(
                    mutate, action=action, actor=actor, target=target)
        except PatternNotFoundError:
            self.audit.record(actor, action, target=target, outcome="not_found")
            raise
        except PatternExistsError:
            self.audit.record(actor, action, target=target, outcome="exists")
            raise
        except PatternError:
            self.audit.record(actor, action, target=target, outcome="invalid_pattern")
            raise
        except DatabaseError:
            self.audit.record(actor, action, target=target, outcome="database_unavailable")
            raise
        self.audit.record(actor, action, target=target, outcome="success",
                          detail={**(detail or {}), "version": propagation.version,
                                  "patterns": len(prepared.patterns)})
        await self.router.settled()  # its examples count in stage 2 once this returns
        return PatternChange(action=action, target=target, patterns=len(prepared.patterns),
                             propagation=propagation)

    # -- Memories and the cache: validated, admitted and audited here, for every way in ----

    async def store_memory(self, namespace: str, memory: MemoryInput, *,
                           actor: str | None = None) -> MemoryRecord:
        """Store ``memory`` in ``namespace`` (a checked namespace; the memory's own rules are
        :class:`~tmws.inputs.MemoryInput`'s), admitted as memory work and audited as
        ``memory.store`` by ``actor`` (default: the namespace). InvalidRequestError names
        what is wrong; OverloadedError or DatabaseError when nothing was stored."""
        async with self.admitted(PatternType.MEMORY, "memory.store"):
            record = await self.memory.store_input(namespace, memory)
        self.audit.record(actor or namespace, "memory.store", target=str(record.id),
                          outcome="success", detail={"visibility": memory.visibility})
        return record

    async def delete_memory(self, namespace: str, memory_id: int, *,
                            actor: str | None = None) -> bool:
        """Delete memory ``memory_id`` if ``namespace`` owns it (shared or not): whether it
        did, audited as ``memory.delete`` (``not_found`` otherwise)."""
        async with self.admitted(PatternType.MEMORY, "memory.delete"):
            deleted = await self.memory.delete(namespace, memory_id)
        self.audit.record(actor or namespace, "memory.delete", target=str(memory_id),
                          outcome="success" if deleted else "not_found")
        return deleted

    async def clear_cache(self, *, actor: str = SYSTEM_ACTOR) -> int:
        """Drop every cached result — Redis's for all instances, this process's in-process
        one — and return how many Redis held; audited as ``cache.clear``. RedisUnavailable
        (audited as such) when only the in-process cache could be cleared."""
        try:
            deleted = await self.cache.clear()
        except RedisUnavailable:
            self.audit.record(actor, "cache.clear", outcome="redis_unavailable")
            raise
        self.audit.record(actor, "cache.clear", outcome="success", detail={"deleted": deleted})
        return deleted

    async def verify(self, *, execute: bool = True, actor: str = SYSTEM_ACTOR
                     ) -> VerificationReport:
        """The installation checks of ``tmws verify`` on this engine (its pool, cache and
        router; ``execute``: also run one pattern per type), audited as ``verify``."""
        report = await verify_engine(self, execute=execute)
        self.audit.record(actor, "verify", outcome=report.status,
                          detail={"exit_code": report.exit_code})
        return report

    def bind_handler(self, name: str, handler: Handler, *, reads_memory: bool = False,
                     writes_memory: bool = False, reads_stats: bool = False,
                     database: bool = False, writes: bool = False) -> None:
        """Bind an async handler; patterns use it through ``handler: name`` or their name.

        Declare what it does (:class:`tmws.handlers.Capabilities`): ``reads_memory`` and
        ``writes_memory`` give it ``ctx.memory`` and make executions need the
        ``memories:read`` / ``memories:write`` scopes (a write is never cached, never run
        alongside retrieval); ``reads_stats`` gives it ``ctx.statistics()`` behind
        ``metrics:read``; ``database`` lets ``ctx.health()`` probe the database outside fast
        mode. ``writes`` is the older name of ``writes_memory``. A binding that would put
        memory access behind a registered infrastructure pattern is refused
        (PatternConfigError) and changes nothing.
        """
        bound = BoundHandler(handler, Capabilities(
            reads_memory=reads_memory, writes_memory=writes_memory or writes,
            reads_stats=reads_stats, database=database))
        staged = {**self.handlers, name: bound}
        for pattern in self.registry.patterns():
            problem = check_pattern_handler(pattern, staged)
            if problem is not None:
                raise PatternConfigError(problem, pattern=pattern.name)
        self.handlers = staged

    def _check_patterns(self, patterns: Sequence[PatternDefinition], source: str) -> None:
        """PatternConfigError for the first pattern its handler cannot run (unknown, or
        memory access behind an infrastructure pattern)."""
        for pattern in patterns:
            problem = check_pattern_handler(pattern, self.handlers)
            if problem is not None:
                raise PatternConfigError(problem, source=source, pattern=pattern.name)

    # -- execution --------------------------------------------------------------------------

    async def execute(self, query: str, execution_mode: ExecutionMode | str | None = None,
                      context: Mapping[str, Any] | None = None, use_cache: bool = True, *,
                      authorize: Authorize | None = None) -> ExecutionResult:
        """Route and execute one query.

        Invalid input (empty or oversize query, unknown mode, a context field the rules of
        :class:`tmws.inputs.ExecutionContext` refuse) raises InvalidRequestError; everything
        that happens after routing is reported in the result. ``authorize(scopes)`` is
        called once the route is known and before anything runs or is read from the cache,
        with the scopes the handler's declared capabilities need; whatever it raises
        propagates (the HTTP layer checks token scopes this way).
        """
        started = time.perf_counter()
        query, mode, ctx, params = self._validate(query, execution_mode, context)
        namespace = params.namespace
        caching = use_cache and self._caching
        # A trigger match alone fixes the pattern, so a cache hit skips the full routing
        # explanation (the cached result carries the one made when it was computed).
        pattern = self.router.match(query, mode)
        slot: _Slot | None = None
        if pattern is not None:
            handler_name, slot = await self._lookup(caching, pattern, pattern.pattern_type,
                                                    query, mode, namespace, ctx, authorize)
            if slot is not None and slot.hit is not None:
                return self._finish(started, pattern.pattern_type, slot.hit, namespace, mode)
            if slot is None or slot.key not in self._inflight:
                # Under overload most requests are refused: refuse before explaining the
                # route, so that a refusal costs little of what the admitted ones need.
                refused = self._refused_early(handler_name, pattern, mode, namespace)
                if refused is not None:
                    return self._finish(started, pattern.pattern_type, refused, namespace,
                                        mode)

        vector = (await self.router.query_vector(query)
                  if pattern is None and self.router.vectors is not None else None)
        decision = self.router.explain(query, mode, pattern, query_vector=vector)
        meta: dict[str, Any] = {"routing": msgspec.to_builtins(decision), "mode": mode.value,
                                "namespace": namespace,
                                # The original service's result.metadata["pattern_type"].
                                "pattern_type": decision.pattern_type.value}
        if decision.decided_by == "none":
            nearest = decision.alternative_routes
            hint = f"; nearest candidates: {', '.join(nearest)}" if nearest else ""
            return self._finish(started, decision.pattern_type, ExecutionResult(
                pattern_name=None, success=False, error_code=ErrorCode.NO_PATTERN_MATCHED,
                error=f"no pattern matched the query{hint}", metadata=meta), namespace, mode)
        if pattern is None:  # routed by its examples, or by keywords to the type's default
            pattern = (self.registry.get(decision.pattern_name)
                       if decision.pattern_name is not None else None)
            handler_name, slot = await self._lookup(caching, pattern, decision.pattern_type,
                                                    query, mode, namespace, ctx, authorize)
            if slot is not None and slot.hit is not None:
                slot.hit.metadata["routing"] = meta["routing"]  # explained just now
                return self._finish(started, decision.pattern_type, slot.hit, namespace, mode)
        if handler_name not in self.handlers:
            return self._finish(started, decision.pattern_type, ExecutionResult(
                pattern_name=decision.pattern_name, success=False, metadata=meta,
                error_code=ErrorCode.HANDLER_UNBOUND,
                error=(f"pattern {decision.pattern_name!r} names handler {handler_name!r}, "
                       "which is not bound; bind it with engine.bind_handler()")),
                namespace, mode)

        bound = self.handlers[handler_name]
        if mode is ExecutionMode.FAST and bound.capabilities.touches_memory:
            # Registration keeps memory handlers out of infrastructure patterns; this holds
            # the fast-mode promise whatever was bound since (and _run fences the database).
            return self._finish(started, decision.pattern_type, ExecutionResult(
                pattern_name=decision.pattern_name, success=False, metadata=meta,
                error_code=ErrorCode.HANDLER_FORBIDDEN,
                error=(f"handler {handler_name!r} {bound.capabilities.describe()}; fast mode "
                       "never touches the database")), namespace, mode)
        handler_ctx = HandlerContext(query, mode, decision, pattern, params,
                                     bound.capabilities, self, ctx)
        if slot is None:
            result = await self._run(handler_name, handler_ctx, decision, meta)
            return self._finish(started, decision.pattern_type, result, namespace, mode)
        key = slot.key
        joined = self._inflight.get(key)
        if joined is not None:  # the same miss is already running here: share its answer
            self._singleflight_joins += 1
            shared = await asyncio.shield(joined)
            return self._finish(started, decision.pattern_type,
                                msgspec.structs.replace(shared, tokens_used=0), namespace, mode)
        flight: asyncio.Future[ExecutionResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = flight
        try:
            result = await self._run(handler_name, handler_ctx, decision, meta)
            if result.success and not result.metadata.get("partial"):
                encoded = _encode(result)
                if encoded is not None:
                    await self.cache.put(decision.pattern_type, key, encoded,
                                         self._ttl(pattern, decision.pattern_type),
                                         generation=slot.generation)
                else:
                    self._unencodable += 1
            flight.set_result(result)
        except BaseException as exc:
            flight.set_exception(exc)
            flight.exception()  # retrieved: joiners re-raise it, nobody else must
            raise
        finally:
            del self._inflight[key]
        return self._finish(started, decision.pattern_type, result, namespace, mode)

    def _refused_early(self, handler_name: str, pattern: PatternDefinition,
                       mode: ExecutionMode, namespace: str) -> ExecutionResult | None:
        """The refusal admission would give this execution now, or None."""
        bound = self.handlers.get(handler_name)
        if bound is None:
            return None
        capabilities = bound.capabilities
        comprehensive = mode is ExecutionMode.COMPREHENSIVE and not capabilities.writes_memory
        if not (comprehensive or capabilities.touches_memory):
            return None
        kind = PatternType.HYBRID.value if comprehensive else pattern.pattern_type.value
        refusal = self.admission.refusal(
            pattern.pattern_type.value,
            time.monotonic() + self.settings.timeout_ms(kind) / 1000, handler_name)
        if refusal is None:
            return None
        return ExecutionResult(
            pattern_name=pattern.name, success=False, tokens_used=0, error=str(refusal),
            error_code=ErrorCode.OVERLOADED,
            metadata={"mode": mode.value, "namespace": namespace, "handler": handler_name,
                      "retry_after": refusal.retry_after})

    async def _lookup(self, caching: bool, pattern: PatternDefinition | None,
                      pattern_type: PatternType, query: str, mode: ExecutionMode,
                      namespace: str, ctx: Mapping[str, Any], authorize: Authorize | None
                      ) -> tuple[str, _Slot | None]:
        """Once the route is known: the handler, authorised, and the cache slot of this
        execution (with the hit, if any) — None when it must not be cached: caching off, a
        write, cache_ttl 0, or memory generations unknowable because Redis is unreachable."""
        handler_name = resolve_handler(pattern, pattern_type, self.handlers)
        bound = self.handlers.get(handler_name)
        capabilities = bound.capabilities if bound is not None else PURE
        writes = capabilities.writes_memory
        # Comprehensive mode recalls related memories beside any handler but a write.
        reads_memory = capabilities.reads_memory or (
            mode is ExecutionMode.COMPREHENSIVE and not writes)
        if authorize is not None:
            scopes = capabilities.scopes()
            authorize(scopes | _READS_MEMORY if reads_memory else scopes)
        if not caching or writes or (pattern is not None and not pattern.cacheable):
            return handler_name, None
        relevant = {k: v for k, v in ctx.items() if k not in _IDENTITY_KEYS} if ctx else None
        key = cache_key([namespace, normalize_query(query), mode.value,
                         msgspec.json.encode(relevant, order="sorted") if relevant else "",
                         self.registry.cache_identity(pattern)])
        found = await self.cache.get(pattern_type, key,
                                     namespace=namespace if reads_memory else None)
        if not found.cacheable:
            return handler_name, None
        self.metrics.cache_lookup(found.tier, found.redis_lookup)
        hit = None
        if found.value is not None:
            hit = _decode(found.value)  # a fresh object per hit: safe to mark in place
            self._counters.tokens_saved += hit.tokens_used
            hit.tokens_used = 0
            hit.cache_hit = True
            hit.metadata["cache_tier"] = found.tier
        return handler_name, _Slot(key, found.generation, hit)

    def _validate(self, query: Any, mode: Any, context: Any
                  ) -> tuple[str, ExecutionMode, dict[str, Any], ExecutionContext]:
        if not isinstance(query, str):
            raise InvalidRequestError("query must be a string")
        query = query.strip()
        if not query:
            raise InvalidRequestError("query is empty")
        limit = self.settings.max_query_length
        if len(query) > limit:
            raise InvalidRequestError(
                f"query is {len(query)} characters; the limit is {limit} (TMWS_MAX_QUERY_LENGTH)")
        if mode is None:
            mode = self.settings.pattern_default_mode
        # A dict hit is ~10x cheaper than the enum's own lookup.
        parsed = _MODES.get(mode) if isinstance(mode, str) else None
        if parsed is None:
            allowed = ", ".join(m.value for m in ExecutionMode)
            raise InvalidRequestError(f"unknown execution mode {mode!r}; use one of: {allowed}")
        if not context:
            return query, parsed, {}, _NO_CONTEXT
        if not isinstance(context, Mapping):
            raise InvalidRequestError("context must be an object (mapping)")
        ctx = dict(context)
        limits = self._limits
        check_depth(ctx, limits.max_json_depth - 1, "context")  # it sits in a request body
        params = convert(ctx, ExecutionContext, "context")
        if params.metadata is not None:
            check_metadata(params.metadata, limits, "context.metadata")
        return query, parsed, ctx, params

    def _ttl(self, pattern: PatternDefinition | None, pattern_type: PatternType) -> float:
        """The pattern's cache_ttl, else its type's (cache_config), else 300 s, scaled by
        TMWS_CACHE_TTL / 300 (or the given CacheManager's redis_ttl): tmws.cache says why."""
        if pattern is not None and pattern.cache_ttl is not None:
            return self.cache.lifetime(pattern.cache_ttl)
        type_config = self.library.cache_config.get(pattern_type)
        return self.cache.lifetime(type_config.ttl if type_config else None)

    async def _run(self, handler_name: str, ctx: HandlerContext, decision: RoutingDecision,
                   meta: dict[str, Any]) -> ExecutionResult:
        handler = self.handlers[handler_name].run
        pattern_type = decision.pattern_type
        comprehensive = (ctx.mode is ExecutionMode.COMPREHENSIVE
                         and not ctx.capabilities.writes_memory)
        timeout_ms = self.settings.timeout_ms(
            PatternType.HYBRID.value if comprehensive else pattern_type.value)
        name = decision.pattern_name
        meta = {**meta, "handler": handler_name, "timeout_ms": timeout_ms}
        tokens = decision.estimated_cost
        # One budget for everything: the wait for admission and for a connection included.
        budget = Budget(time.monotonic() + timeout_ms / 1000)
        budget_token = request_budget.set(budget)
        fence = database_fence.set("fast mode") if ctx.mode is ExecutionMode.FAST else None
        admitted = (self.admission.slot(pattern_type.value, budget.deadline, handler_name)
                    if comprehensive or ctx.capabilities.touches_memory else nullcontext())
        try:
            async with asyncio.timeout_at(budget.deadline), admitted:
                if comprehensive:
                    output, related = await asyncio.gather(handler(ctx), self._related(ctx))
                    value: Any = {"handler": output}
                    if isinstance(related, TmwsError):
                        value.update(related_memories=None, partial=True, missing=str(related))
                        meta["partial"] = True
                    else:
                        value["related_memories"] = [msgspec.to_builtins(r) for r in related]
                else:
                    value = await handler(ctx)
        except TimeoutError:
            error = (f"pattern {name or pattern_type.value!r} ({pattern_type.value}) timed out "
                     f"after {timeout_ms} ms (TMWS_PATTERN_"
                     f"{'HYBRID' if comprehensive else _TIMEOUT_VAR[pattern_type]}_TIMEOUT)")
            if budget.starved or (pattern_type is not PatternType.INFRASTRUCTURE
                                  and not self.database.available):
                # Queued for a connection, or the server went away: the database's doing.
                reason: DatabaseError | OverloadedError = (
                    self.database.unreachable() if not self.database.available else
                    OverloadedError(f"overloaded: no database connection came free in time; "
                                    f"{error}", retry_after=1))
                return await self._unserved(ctx, tokens, meta, reason)
            return ExecutionResult(pattern_name=name, success=False, tokens_used=tokens,
                                   metadata=meta, error=error,
                                   error_code=ErrorCode.PATTERN_TIMEOUT)
        except (DatabaseError, OverloadedError) as exc:
            return await self._unserved(ctx, tokens, meta, exc)
        except HealthCheckFailed as exc:
            return ExecutionResult(pattern_name=name, success=False, result=exc.report,
                                   tokens_used=tokens, error=str(exc),
                                   error_code=ErrorCode.HEALTH_CHECK_FAILED, metadata=meta)
        except InvalidRequestError as exc:
            return ExecutionResult(pattern_name=name, success=False, tokens_used=tokens,
                                   error=str(exc), error_code=ErrorCode.INVALID_REQUEST,
                                   metadata=meta)
        except TmwsError as exc:
            return ExecutionResult(pattern_name=name, success=False, tokens_used=tokens,
                                   error=str(exc), error_code=ErrorCode.HANDLER_ERROR,
                                   metadata=meta)
        finally:
            if fence is not None:
                database_fence.reset(fence)
            request_budget.reset(budget_token)
        return ExecutionResult(pattern_name=name, success=True, result=value,
                               tokens_used=tokens, metadata=meta)

    async def _unserved(self, ctx: HandlerContext, tokens: int, meta: dict[str, Any],
                        reason: DatabaseError | OverloadedError) -> ExecutionResult:
        """The database could not serve this execution (down, or too busy to within the
        budget): a hybrid pattern still answers with its infrastructure part; anything
        else fails with ``database_unavailable`` or ``overloaded`` and when to retry."""
        if ctx.decision.pattern_type is PatternType.HYBRID:
            return await self._partial(ctx, tokens, meta, str(reason))
        code = (ErrorCode.OVERLOADED if isinstance(reason, OverloadedError)
                else ErrorCode.DATABASE_UNAVAILABLE)
        return ExecutionResult(pattern_name=ctx.decision.pattern_name, success=False,
                               tokens_used=tokens, error=str(reason), error_code=code,
                               metadata={**meta, "retry_after": reason.retry_after})

    @asynccontextmanager
    async def admitted(self, pattern_type: PatternType, work: str) -> AsyncIterator[None]:
        """For database work done for a caller outside :meth:`execute` (the memory routes):
        the pattern type's time budget bounds the wait for admission and for connections;
        OverloadedError or DatabaseError (nothing done) when they cannot be had in time."""
        budget = Budget(time.monotonic() + self.settings.timeout_ms(pattern_type.value) / 1000)
        token = request_budget.set(budget)
        try:
            async with self.admission.slot(pattern_type.value, budget.deadline, work):
                yield
        finally:
            request_budget.reset(token)

    async def _related(self, ctx: HandlerContext) -> list[Any] | TmwsError:
        """Memories related to the query, or the reason there are none (comprehensive mode)."""
        try:
            return await self.memory.search(ctx.namespace, ctx.topic(), limit=5)
        except (DatabaseError, OverloadedError) as exc:
            return exc

    async def _partial(self, ctx: HandlerContext, tokens: int, meta: dict[str, Any],
                       reason: str) -> ExecutionResult:
        """A hybrid pattern without its memory half: the infrastructure part, marked."""
        delegate = await delegate_to_caller(ctx)
        return ExecutionResult(
            pattern_name=ctx.decision.pattern_name, success=True, tokens_used=tokens,
            result={"partial": True, "missing": f"memories: {reason}", "delegate": delegate},
            metadata={**meta, "partial": True})

    def _finish(self, started: float, pattern_type: PatternType, result: ExecutionResult,
                namespace: str, mode: ExecutionMode) -> ExecutionResult:
        seconds = time.perf_counter() - started
        elapsed = seconds * 1000
        result.execution_time_ms = int(elapsed * 1000 + 0.5) / 1000  # round(x, 3), cheaper
        # A pattern name that is not registered (a stale cached one) must not become a label.
        name = result.pattern_name if result.pattern_name in self.registry else None
        self.metrics.record(pattern_type, name, result.success, seconds, result.tokens_used)
        counters = self._counters
        counters.total += 1
        counters.time_ms += elapsed
        counters.tokens += result.tokens_used
        if result.cache_hit:
            counters.cache_hits += 1
        type_counts = self._by_type[pattern_type]
        type_counts["executions"] += 1
        self._recent_ms[pattern_type].append(elapsed)
        if result.success:
            counters.successful += 1
        else:
            counters.failed += 1
            type_counts["failures"] += 1
        if self.audit.enabled:
            self.audit.record(
                namespace, "execute", target=result.pattern_name,
                outcome="success" if result.success else result.error_code or "failure",
                tokens=result.tokens_used, duration_ms=elapsed,
                detail=_execute_detail(pattern_type, result.cache_hit, mode))
        return result

    # -- introspection ----------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        c = self._counters
        return {
            # Each worker answers with its own figures: the pid says which one did.
            "worker_pid": os.getpid(),
            "total_executions": c.total,
            "successful_executions": c.successful,
            "failed_executions": c.failed,
            "cache_hits": c.cache_hits,
            "avg_execution_time_ms": round(c.time_ms / c.total, 3) if c.total else 0.0,
            "total_tokens_used": c.tokens,
            "tokens_saved": c.tokens_saved,
            "success_rate": round(100.0 * c.successful / c.total, 2) if c.total else 0.0,
            "cache_hit_rate": round(100.0 * c.cache_hits / c.total, 2) if c.total else 0.0,
            "executions_by_type": {k: dict(v) for k, v in self._by_type.items()},
            "cache_stats": {**self.cache.stats(),
                            "singleflight_joins": self._singleflight_joins,
                            "unencodable_skipped": self._unencodable},
            "registry_stats": {
                **(registry := self.registry.get_stats()),
                # The original service's key: its match cache's hit rate (percent).
                "cache_hit_rate": registry["match_cache"]["hit_rate"],
                "fingerprint": self.registry.fingerprint,
                "sync": None if self._sync is None else self._sync.stats(),
            },
            "router_stats": self.router.get_stats(),
            "audit_stats": self.audit.stats(),
            "admission_stats": self.admission.stats(),
            # This worker's pool: the guide's get_pool_stats() run from another process
            # cannot see a server's pool, /api/v1/stats can.
            "database_stats": self.pool_stats(),
            "performance": self.performance(),
        }

    def performance(self) -> dict[str, dict[str, Any]]:
        """Per pattern type: p50/p95/p99 of the latest executions in this process (ms) next
        to the library's ``performance_targets``; ``within_targets`` is None until there
        are enough samples for a p99 to mean something."""
        report: dict[str, dict[str, Any]] = {}
        for pattern_type in PatternType:
            samples = sorted(self._recent_ms[pattern_type])
            targets = self.library.performance_targets[pattern_type]
            observed = {q: _nearest_rank(samples, q) for q in ("p50", "p95", "p99")}
            report[pattern_type.value] = {
                "samples": len(samples),
                **{f"{q}_ms": observed[q] for q in observed},
                "targets_ms": msgspec.to_builtins(targets),
                "within_targets": None if len(samples) < _MIN_LATENCY_SAMPLES else all(
                    (observed[q] or 0.0) <= getattr(targets, q) for q in observed),
            }
        return report

    async def evaluate(self, labelled: Sequence[Labelled], *,
                       mode: ExecutionMode | str | None = None, min_score: float | None = None,
                       min_margin: float | None = None) -> Evaluation:
        """Route labelled queries (nothing executes) and score the routing; see
        :mod:`tmws.evaluation` and ``tmws patterns eval``. With an embedding model, the
        queries are embedded in batches first (EmbeddingError if the model fails)."""
        vectors = await self.router.embed_queries([item.query for item in labelled])
        return evaluate(self.router, labelled,
                        mode=ExecutionMode(mode or self.settings.pattern_default_mode),
                        min_score=min_score, min_margin=min_margin, vectors=vectors)

    def cache_hit_rates(self) -> dict[str, float]:
        """Hit rates in percent per cache type: local, redis, match, and overall."""
        stats = self.get_stats()
        return {"local": stats["cache_stats"]["local"]["hit_rate"],
                "redis": stats["cache_stats"]["redis"]["hit_rate"],
                "match": stats["registry_stats"]["match_cache"]["hit_rate"],
                "overall": stats["cache_hit_rate"]}

    def pool_stats(self) -> dict[str, Any]:
        return self.database.pool_stats()

    @property
    def cache_manager(self) -> CacheManager:
        """The original service's name of :attr:`cache`."""
        return self.cache

    async def health(self, *, probe_database: bool = True,
                     database_timeout: float | None = None) -> dict[str, Any]:
        """Status of the engine, the database and the cache.

        ``database_timeout`` (seconds) bounds the database probe; by default it leaves the
        health pattern time to report within TMWS_PATTERN_INFRA_TIMEOUT.
        """
        engine = {"status": "ok", "patterns": len(self.registry), "version": __version__}
        if probe_database:
            if database_timeout is None:
                database_timeout = 0.6 * self.settings.pattern_infra_timeout / 1000
            ok = await self.database.ping(timeout=database_timeout)
            database: dict[str, Any] = {"status": "ok" if ok else "unavailable",
                                        "pool": self.pool_stats()}
        else:
            database = {"status": "not_probed", "reason": "fast mode never touches the database",
                        "pool": self.pool_stats()}
        redis = await self.cache.ping()
        cache: dict[str, Any] = {
            "status": "degraded" if redis.startswith("unavailable") else "ok",
            "local": "enabled" if self.settings.cache_enabled else "disabled",
            "redis": redis, "circuit": self.cache.breaker.state}
        healthy = database["status"] in ("ok", "not_probed") and cache["status"] == "ok"
        return {"healthy": healthy, "engine": engine, "database": database, "cache": cache}


_TIMEOUT_VAR: Final = {PatternType.INFRASTRUCTURE: "INFRA", PatternType.MEMORY: "MEMORY",
                       PatternType.HYBRID: "HYBRID"}


_MODES: Final[dict[Any, ExecutionMode]] = {
    **{m.value: m for m in ExecutionMode}, **{m: m for m in ExecutionMode}}
_EXECUTE_DETAILS: dict[tuple[PatternType, bool, ExecutionMode], ConstantDetail] = {}


def _execute_detail(pattern_type: PatternType, cache_hit: bool, mode: ExecutionMode
                    ) -> ConstantDetail:
    """One shared, pre-encoded detail per combination (18 in all): no per-record dict."""
    key = (pattern_type, cache_hit, mode)
    detail = _EXECUTE_DETAILS.get(key)
    if detail is None:
        detail = _EXECUTE_DETAILS[key] = ConstantDetail(
            pattern_type=pattern_type.value, cache_hit=cache_hit, mode=mode.value)
    return detail


def require_patterns(library: PatternLibrary, allow_empty: bool) -> None:
    """PatternConfigError for a library without patterns, unless that is wanted: a file
    emptied by mistake must not silence every instance."""
    if not library.patterns and not allow_empty:
        raise PatternConfigError(
            "defines no patterns; an empty library would answer nothing, so it is refused "
            "unless asked for explicitly (\"allow_empty\": true on reload, or "
            "TMWS_PATTERN_ALLOW_EMPTY=true)", source=library.source)


def cache_manager_for(settings: Settings, library: PatternLibrary) -> CacheManager:
    """The two-tier cache the settings and the pattern file's cache_config describe."""
    return CacheManager(
        redis_url=settings.redis_url, local_ttl=settings.cache_local_ttl,
        redis_ttl=settings.cache_ttl, max_local_size=settings.cache_max_size,
        type_sizes=_declared_sizes(library),
        redis_timeout=settings.redis_timeout,
        redis_max_connections=settings.redis_max_connections,
        max_value_bytes=settings.cache_max_value_bytes,
        breaker_failures=settings.cache_breaker_failures,
        breaker_reset=settings.cache_breaker_reset)


def _declared_sizes(library: PatternLibrary) -> dict[str, int]:
    """L1 entries per pattern type as the pattern file declares them (cache_config), before
    TMWS_CACHE_MAX_SIZE scales them."""
    return {t.value: library.cache_config[t].max_size if t in library.cache_config
            else BASE_LOCAL_SIZE for t in PatternType}


_result_encoder = msgspec.msgpack.Encoder()
_result_decoder = msgspec.msgpack.Decoder(ExecutionResult)
_NO_CONTEXT: Final = ExecutionContext()


def _encode(result: ExecutionResult) -> bytes | None:
    """The cached form of a result, or None if it has no msgpack form (an integer beyond
    64 bits in a handler's output): such a result is answered, just not cached."""
    try:
        return _result_encoder.encode(result)
    except (OverflowError, TypeError, ValueError):
        return None


def _decode(raw: bytes) -> ExecutionResult:
    return _result_decoder.decode(raw)


async def create_pattern_execution_engine(settings: Settings | CacheManager | None = None, *,
                                          patterns: PatternLibrary | None = None,
                                          handlers: Mapping[str, Handler] | None = None,
                                          cache: CacheManager | None = None,
                                          cache_manager: CacheManager | None = None
                                          ) -> PatternExecutionEngine:
    """Build a ready engine from the environment (or the given settings).

    Without TMWS_DATABASE_URL the embedded PostgreSQL starts in TMWS_DATA_DIR and is
    migrated; with it, the schema must already be current (``tmws db upgrade``).

    ``cache`` (or the original service's ``cache_manager``, also accepted as the first
    argument) is a :class:`tmws.cache.CacheManager` built by the caller, e.g. the guide's
    ``CacheManager(redis_url=..., local_ttl=120, redis_ttl=600, max_local_size=2000)``:
    its settings replace TMWS_REDIS_URL, TMWS_CACHE_TTL, TMWS_CACHE_MAX_SIZE and
    TMWS_CACHE_LOCAL_TTL for this engine, which does not close it.
    """
    if isinstance(settings, CacheManager):  # the original's positional cache_manager
        cache_manager, settings = settings, None
    if cache is not None and cache_manager is not None and cache is not cache_manager:
        raise TypeError("pass the cache once: cache= or cache_manager=, not both")
    cache = cache or cache_manager
    settings = settings or Settings.from_env()
    library = patterns
    if library is None:
        library = load_pattern_file(settings.pattern_config or default_library_path(),
                                    limits=settings.pattern_limits)
        require_patterns(library, settings.pattern_allow_empty)
    server = await open_server(settings)
    database = Database(server.conninfo, settings)
    try:
        await database.open()
        await check_embedding_config(database, settings)
    except BaseException:
        await database.close()
        await server.stop()
        raise
    if (cache is None and settings.redis_url is None) or (
            cache is not None and not cache.redis_configured):
        logger.info("no Redis configured: results are cached in this process only")
    try:
        engine = PatternExecutionEngine(settings, library, database, server=server,
                                        handlers=handlers, cache=cache)
        await engine.start_pattern_sync()
        await engine.router.settled()  # on failure: logged, stage 2 scores lexically
        return engine
    except BaseException:
        await database.close()
        await server.stop()
        raise
