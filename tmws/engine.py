"""The pattern execution engine: the one façade over routing, the result cache, handler
execution, pattern changes, memories and the service's statistics.

Its parts, each in its own module and none calling back up into the engine:

=====================  ==============================================================
tmws.router            which pattern a query goes to (triggers, then examples)
tmws._result_cache     whether and where a result is cached; single-flight of misses
tmws._execution        request checks; running a handler in its budget, with admission
tmws._pattern_changes  register / unregister / reload, through the pattern group
tmws._statistics       counters, percentiles, ``get_stats()`` and the health report
=====================  ==============================================================

Every operation that changes something (patterns, memories, the cache) is validated and
audited here once, so HTTP, the CLI and the Python API behave alike.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final

import msgspec

from tmws._example_vectors import example_vectors_for
from tmws._execution import HandlerRunner, recalls_alongside, validate_request
from tmws._pattern_changes import PatternChange, PatternChanges
from tmws._pattern_sync import PatternSets
from tmws._recall_index import DerivedRecallIndex
from tmws._result_cache import CacheSlot, ResultCache, cache_manager_for, declared_sizes
from tmws._statistics import ExecutionStatistics, ServiceStatus
from tmws.admission import Admission
from tmws.audit import SYSTEM_ACTOR, AuditLog, ConstantDetail
from tmws.cache import CacheManager
from tmws.config import Settings
from tmws.database import (
    Database,
    DatabaseServer,
    check_embedding_config,
    open_server,
    service_database,
)
from tmws.database._changes import ChangeLogPruner
from tmws.embeddings import EmbeddingProvider, create_provider
from tmws.errors import ErrorCode, PatternConfigError, RedisUnavailable
from tmws.evaluation import Evaluation, Labelled, evaluate
from tmws.handlers import (
    HANDLERS,
    PURE,
    BoundHandler,
    Capabilities,
    Handler,
    HandlerContext,
    HandlerServices,
    check_pattern_handler,
    resolve_handler,
)
from tmws.health import HealthReport
from tmws.inputs import MemoryInput
from tmws.lexicon import RoutingLexicon
from tmws.memory import MemoryRecord, MemoryStore
from tmws.metrics import ExecutionMetrics
from tmws.models import (
    ExecutionMode,
    ExecutionResult,
    PatternDefinition,
    PatternType,
)
from tmws.patterns import (
    PatternLibrary,
    default_library_path,
    load_pattern_file,
    require_patterns,
)
from tmws.registry import PatternRegistry
from tmws.router import HybridRouter
from tmws.verify import VerificationReport, verify_engine

__all__ = ["Authorize", "PatternChange", "PatternExecutionEngine",
           "create_pattern_execution_engine"]

logger = logging.getLogger("tmws.engine")

# authorize(scopes): raise to refuse an execution that needs these token scopes (beyond
# execute), derived from what its handler declares it does (tmws.handlers.Capabilities).
Authorize = Callable[[frozenset[str]], None]
_READS_MEMORY: Final = frozenset({"memories:read"})


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
        else:  # built by the caller (CacheManager(...) in the Python API): the file's sizes
            cache.size_types(declared_sizes(library))
        self.cache = cache
        provider = provider or create_provider(settings)
        recall_index = DerivedRecallIndex(
            database, settings.embedding_dim, ef_search=settings.recall_index_ef_search,
            retention=settings.recall_index_log_retention,
        ) if settings.recall_index == "memory" else None
        self.memory = MemoryStore(database, provider,
                                  min_similarity=settings.recall_min_similarity,
                                  generations=self.cache, limits=settings.input_limits,
                                  recall_index=recall_index)
        self.registry = PatternRegistry(library.patterns, limits=settings.pattern_limits,
                                        lexicon=RoutingLexicon.shipped(settings.router_lexicon))
        self.router = HybridRouter(self.registry,
                                   database_available=lambda: database.available,
                                   min_score=settings.router_min_score,
                                   min_margin=settings.router_min_margin,
                                   vectors=example_vectors_for(settings, self.registry,
                                                               provider))
        self._server = server  # stopped on close when this engine opened it
        self._sync: PatternSets | None = None
        self._change_log: ChangeLogPruner | None = None
        self._closed = False
        self._caching = settings.cache_enabled and settings.pattern_cache_enabled
        self.metrics = ExecutionMetrics()
        self.results = ResultCache(self.cache, self.registry, self.metrics, library)
        # Executions that use memories wait for one of these, never for the pool itself.
        self.admission = Admission(settings.admission_limit, settings.admission_max_queue,
                                   adaptive=settings.admission_adaptive)
        self.runner = HandlerRunner(settings, self.admission, database, self.memory)
        # Every execution is recorded in _finish, every change by the operation making it.
        self.audit = AuditLog(database, enabled=settings.audit_enabled,
                              spill_dir=settings.audit_spill_path)
        self.executions = ExecutionStatistics()
        self.status = ServiceStatus(settings, executions=self.executions, results=self.results,
                                    registry=self.registry, router=self.router,
                                    audit=self.audit, admission=self.admission,
                                    database=database, targets=library.performance_targets)
        if recall_index is not None:
            self.status.recall_index_stats = recall_index.stats
        self.pattern_changes = PatternChanges(settings, self.registry, self.router, self.audit,
                                              self._check_patterns)
        self._services = HandlerServices(self.memory, self.registry, self.status)

    # -- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sync is not None:
            await self._sync.close()
        if self.router.vectors is not None:
            await self.router.vectors.aclose()
        if self.memory.recall_index is not None:
            await self.memory.recall_index.close()
        if self._change_log is not None:
            await self._change_log.close()
        await self.audit.close()  # its last records need the database
        await self.database.close()
        await self.memory.provider.aclose()
        if self._owns_cache:  # a caller's cache may serve other engines: theirs to close
            await self.cache.close()
        if self._server is not None:
            await self._server.stop()
        gc.unfreeze()  # what start-up froze may now be garbage (see _freeze_start_up)

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
        self._sync = self.pattern_changes.sync = sync
        self.status.sync_stats = sync.stats

    # -- pattern changes --------------------------------------------------------------------

    async def register_pattern(self, pattern: PatternDefinition | Mapping[str, Any], *,
                               replace: bool = False, actor: str = SYSTEM_ACTOR
                               ) -> PatternChange:
        """Add a pattern (or replace one of the same name) for every instance of the group;
        ``pattern`` may be a mapping as written in a pattern file.

        Refused, with nothing changed anywhere: PatternExistsError (the name is taken and
        ``replace`` is false), PatternConfigError or PatternCompileError (the pattern or its
        handler is unusable), DatabaseError (the change cannot be stored). Audited.
        """
        return await self.pattern_changes.register(pattern, replace=replace, actor=actor)

    async def unregister_pattern(self, name: str, *, actor: str = SYSTEM_ACTOR
                                 ) -> PatternChange:
        """Remove a pattern for every instance of the group (PatternNotFoundError if the
        group's set has none of that name). Audited."""
        return await self.pattern_changes.unregister(name, actor=actor)

    async def reload_patterns(self, *, allow_empty: bool | None = None,
                              actor: str = SYSTEM_ACTOR) -> PatternChange:
        """Re-read TMWS_PATTERN_CONFIG and make it the whole set of every instance of the
        group (all or nothing). A file without patterns is refused unless ``allow_empty``
        (default: TMWS_PATTERN_ALLOW_EMPTY). Audited."""
        change, library = await self.pattern_changes.reload(allow_empty=allow_empty,
                                                            actor=actor)
        self.library = library
        self.results.use_library(library)
        self.status.use_targets(library.performance_targets)
        return change

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

    def admitted(self, pattern_type: PatternType, work: str
                 ) -> AbstractAsyncContextManager[None]:
        """For database work done for a caller outside :meth:`execute` (the memory
        operations): the pattern type's time budget bounds the wait for admission and for
        connections; OverloadedError or DatabaseError (nothing done) when they cannot be
        had in time."""
        return self.runner.admitted(pattern_type, work)

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
        query, mode, ctx, params = validate_request(self.settings, query, execution_mode,
                                                    context)
        namespace = params.namespace
        caching = use_cache and self._caching
        # A trigger match alone fixes the pattern, so a cache hit skips the full routing
        # explanation (the cached result carries the one made when it was computed; a query
        # whose trigger yields to the off-topic examples abstains, so nothing is cached).
        pattern = self.router.match(query, mode)
        slot: CacheSlot | None = None
        if pattern is not None:
            handler_name, bound, slot = await self._lookup(
                caching, pattern, pattern.pattern_type, query, mode, namespace, ctx, authorize)
            if slot is not None and slot.hit is not None:
                return self._finish(started, pattern.pattern_type, slot.hit, namespace, mode)
            if bound is not None and (slot is None or not self.results.running(slot)):
                # Under overload most requests are refused: refuse before explaining the
                # route, so that a refusal costs little of what the admitted ones need.
                refused = self.runner.refused_early(bound, handler_name, pattern, mode,
                                                    namespace)
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
        if pattern is None:  # routed by its examples, or by keywords to a pattern of a type
            pattern = (self.registry.get(decision.pattern_name)
                       if decision.pattern_name is not None else None)
            handler_name, bound, slot = await self._lookup(
                caching, pattern, decision.pattern_type, query, mode, namespace, ctx,
                authorize)
            if slot is not None and slot.hit is not None:
                slot.hit.metadata["routing"] = meta["routing"]  # explained just now
                return self._finish(started, decision.pattern_type, slot.hit, namespace, mode)
        if bound is None:
            return self._finish(started, decision.pattern_type, ExecutionResult(
                pattern_name=decision.pattern_name, success=False, metadata=meta,
                error_code=ErrorCode.HANDLER_UNBOUND,
                error=(f"pattern {decision.pattern_name!r} names handler {handler_name!r}, "
                       "which is not bound; bind it with engine.bind_handler()")),
                namespace, mode)
        if mode is ExecutionMode.FAST and bound.capabilities.touches_memory:
            # Registration keeps memory handlers out of infrastructure patterns; this holds
            # the fast-mode promise whatever was bound since (and the runner fences the
            # database).
            return self._finish(started, decision.pattern_type, ExecutionResult(
                pattern_name=decision.pattern_name, success=False, metadata=meta,
                error_code=ErrorCode.HANDLER_FORBIDDEN,
                error=(f"handler {handler_name!r} {bound.capabilities.describe()}; fast mode "
                       "never touches the database")), namespace, mode)
        handler_ctx = HandlerContext(query, mode, decision, pattern, params,
                                     bound.capabilities, self._services, ctx)
        run = bound, handler_name, handler_ctx, meta
        if slot is None:
            result = await self.runner.run(*run)
        else:
            result = await self.results.compute_once(
                slot, pattern, decision.pattern_type, lambda: self.runner.run(*run))
        return self._finish(started, decision.pattern_type, result, namespace, mode)

    async def _lookup(self, caching: bool, pattern: PatternDefinition | None,
                      pattern_type: PatternType, query: str, mode: ExecutionMode,
                      namespace: str, ctx: Mapping[str, Any], authorize: Authorize | None
                      ) -> tuple[str, BoundHandler | None, CacheSlot | None]:
        """Once the route is known: the handler (None if unbound), authorised, and the
        cache slot of this execution with its hit, if any — None when it must not be
        cached (caching off, a write, or what :meth:`ResultCache.lookup` refuses)."""
        handler_name = resolve_handler(pattern, pattern_type, self.handlers)
        bound = self.handlers.get(handler_name)
        capabilities = bound.capabilities if bound is not None else PURE
        reads_memory = capabilities.reads_memory or recalls_alongside(mode, capabilities)
        if authorize is not None:
            scopes = capabilities.scopes()
            authorize(scopes | _READS_MEMORY if reads_memory else scopes)
        if not caching or capabilities.writes_memory:
            return handler_name, bound, None
        slot = await self.results.lookup(pattern, pattern_type, query, mode, namespace, ctx,
                                         reads_memory=reads_memory)
        return handler_name, bound, slot

    def _finish(self, started: float, pattern_type: PatternType, result: ExecutionResult,
                namespace: str, mode: ExecutionMode) -> ExecutionResult:
        seconds = time.perf_counter() - started
        elapsed = seconds * 1000
        result.execution_time_ms = int(elapsed * 1000 + 0.5) / 1000  # round(x, 3), cheaper
        # A pattern name that is not registered (a stale cached one) must not become a label.
        name = result.pattern_name if result.pattern_name in self.registry else None
        self.metrics.record(pattern_type, name, result.success, seconds, result.tokens_used)
        self.executions.record(pattern_type, result, elapsed)
        if self.audit.enabled:
            self.audit.record(
                namespace, "execute", target=result.pattern_name,
                outcome="success" if result.success else result.error_code or "failure",
                tokens=result.tokens_used, duration_ms=elapsed,
                detail=_execute_detail(pattern_type, result.cache_hit, mode))
        return result

    # -- introspection ----------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """This worker's counters and the statistics of every part (``GET /api/v1/stats``)."""
        return self.status.stats()

    def performance(self) -> dict[str, dict[str, Any]]:
        """Per pattern type: p50/p95/p99 of the latest executions in this process (ms) next
        to the library's ``performance_targets``; ``within_targets`` is None until there
        are enough samples for a p99 to mean something."""
        return self.status.performance()

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
        return self.status.pool_stats()

    @property
    def cache_manager(self) -> CacheManager:
        """The original service's name of :attr:`cache`."""
        return self.cache

    async def health(self, *, probe_database: bool = True,
                     database_timeout: float | None = None) -> HealthReport:
        """Status of the engine, the database and the cache (:mod:`tmws.health`).

        ``database_timeout`` (seconds) bounds the database probe; by default it leaves the
        health pattern time to report within TMWS_PATTERN_INFRA_TIMEOUT.
        """
        return await self.status.health(probe_database=probe_database,
                                        database_timeout=database_timeout)


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


def _freeze_start_up() -> None:
    """Keep the objects that exist once the engine is ready out of later collections.

    A full collection walks every tracked object (~115,000 after start-up: 30-60 ms here,
    over 100 ms on a loaded host) while every request in flight waits, which set the p99
    of an in-process comprehensive miss (bench/README.md). Start-up objects live as long as
    the engine; ``close`` unfreezes them so a closed engine's cycles can be collected.
    """
    gc.collect()
    gc.freeze()


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
    argument) is a :class:`tmws.cache.CacheManager` built by the caller, e.g. the Python API's
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
    database = service_database(server.conninfo, settings)
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
        if engine.memory.recall_index is not None:  # loads in the background
            engine.memory.recall_index.start()
        else:  # nothing here reads the change log, but the triggers still write it
            engine._change_log = ChangeLogPruner(
                database, retention=settings.recall_index_log_retention)
            engine._change_log.start()
        await engine.router.settled()  # on failure: logged, stage 2 scores lexically
        _freeze_start_up()
        return engine
    except BaseException:
        await database.close()
        await server.stop()
        raise
