"""Running one routed execution: checking the request, refusing early under overload, and
running its handler inside the pattern type's time budget with admission for database
work, every failure turned into a result with a stable :class:`~tmws.errors.ErrorCode`.

The engine decides *what* runs (routing, the cache); this decides *how* it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, nullcontext
from typing import Any, Final

import msgspec

from tmws.admission import Admission
from tmws.config import Settings
from tmws.database import Budget, Database, database_fence, request_budget
from tmws.errors import (
    DatabaseError,
    ErrorCode,
    HealthCheckFailed,
    InvalidRequestError,
    OverloadedError,
    TmwsError,
)
from tmws.handlers import BoundHandler, Capabilities, HandlerContext, delegate_to_caller
from tmws.inputs import ExecutionContext, check_depth, check_metadata, convert
from tmws.memory import MemoryStore
from tmws.models import ExecutionMode, ExecutionResult, PatternDefinition, PatternType

__all__ = ["HandlerRunner", "ValidRequest", "recalls_alongside", "validate_request"]

_TIMEOUT_VAR: Final = {PatternType.INFRASTRUCTURE: "INFRA", PatternType.MEMORY: "MEMORY",
                       PatternType.HYBRID: "HYBRID"}
# A dict hit is ~10x cheaper than the enum's own lookup; derived, so a new mode is one edit.
_MODES: Final[dict[Any, ExecutionMode]] = {
    **{m.value: m for m in ExecutionMode}, **{m: m for m in ExecutionMode}}
_NO_CONTEXT: Final = ExecutionContext()

# query, mode, the raw context (other keys pass through to bound handlers) and its checked
# fields.
ValidRequest = tuple[str, ExecutionMode, dict[str, Any], ExecutionContext]


def validate_request(settings: Settings, query: Any, mode: Any, context: Any) -> ValidRequest:
    """InvalidRequestError naming the first thing wrong with an execute request."""
    if not isinstance(query, str):
        raise InvalidRequestError("query must be a string")
    query = query.strip()
    if not query:
        raise InvalidRequestError("query is empty")
    limit = settings.max_query_length
    if len(query) > limit:
        raise InvalidRequestError(
            f"query is {len(query)} characters; the limit is {limit} (TMWS_MAX_QUERY_LENGTH)")
    if mode is None:
        mode = settings.pattern_default_mode
    parsed = _MODES.get(mode) if isinstance(mode, str) else None
    if parsed is None:
        allowed = ", ".join(m.value for m in ExecutionMode)
        raise InvalidRequestError(f"unknown execution mode {mode!r}; use one of: {allowed}")
    if not context:
        return query, parsed, {}, _NO_CONTEXT
    if not isinstance(context, Mapping):
        raise InvalidRequestError("context must be an object (mapping)")
    ctx = dict(context)
    limits = settings.input_limits
    check_depth(ctx, limits.max_json_depth - 1, "context")  # it sits in a request body
    params = convert(ctx, ExecutionContext, "context")
    if params.metadata is not None:
        check_metadata(params.metadata, limits, "context.metadata")
    return query, parsed, ctx, params


def recalls_alongside(mode: ExecutionMode, capabilities: Capabilities) -> bool:
    """Comprehensive mode recalls related memories beside any handler but a write."""
    return mode is ExecutionMode.COMPREHENSIVE and not capabilities.writes_memory


class HandlerRunner:
    """Runs handlers within their time budget, admitting database work."""

    def __init__(self, settings: Settings, admission: Admission, database: Database,
                 memory: MemoryStore) -> None:
        self._settings = settings
        self._admission = admission
        self._database = database
        self._memory = memory

    @asynccontextmanager
    async def admitted(self, pattern_type: PatternType, work: str) -> AsyncIterator[None]:
        """For database work done for a caller outside an execution (the memory
        operations): the pattern type's time budget bounds the wait for admission and for
        connections; OverloadedError or DatabaseError (nothing done) when they cannot be
        had in time."""
        budget = Budget(time.monotonic() + self._settings.timeout_ms(pattern_type.value) / 1000)
        token = request_budget.set(budget)
        try:
            async with self._admission.slot(pattern_type.value, budget.deadline, work):
                yield
        finally:
            request_budget.reset(token)

    def refused_early(self, bound: BoundHandler, handler_name: str,
                      pattern: PatternDefinition, mode: ExecutionMode, namespace: str
                      ) -> ExecutionResult | None:
        """The refusal admission would give this execution now, or None: asked before the
        route is explained, so that under overload a refusal costs little."""
        comprehensive = recalls_alongside(mode, bound.capabilities)
        if not (comprehensive or bound.capabilities.touches_memory):
            return None
        kind = PatternType.HYBRID.value if comprehensive else pattern.pattern_type.value
        refusal = self._admission.refusal(
            pattern.pattern_type.value,
            time.monotonic() + self._settings.timeout_ms(kind) / 1000, handler_name)
        if refusal is None:
            return None
        return ExecutionResult(
            pattern_name=pattern.name, success=False, tokens_used=0, error=str(refusal),
            error_code=ErrorCode.OVERLOADED,
            metadata={"mode": mode.value, "namespace": namespace, "handler": handler_name,
                      "retry_after": refusal.retry_after})

    async def run(self, bound: BoundHandler, handler_name: str, ctx: HandlerContext,
                  meta: dict[str, Any]) -> ExecutionResult:
        decision = ctx.decision
        pattern_type = decision.pattern_type
        comprehensive = recalls_alongside(ctx.mode, bound.capabilities)
        timeout_ms = self._settings.timeout_ms(
            PatternType.HYBRID.value if comprehensive else pattern_type.value)
        name = decision.pattern_name
        meta = {**meta, "handler": handler_name, "timeout_ms": timeout_ms}
        tokens = decision.estimated_cost
        # One budget for everything: the wait for admission and for a connection included.
        budget = Budget(time.monotonic() + timeout_ms / 1000)
        budget_token = request_budget.set(budget)
        fence = database_fence.set("fast mode") if ctx.mode is ExecutionMode.FAST else None
        admitted = (self._admission.slot(pattern_type.value, budget.deadline, handler_name)
                    if comprehensive or bound.capabilities.touches_memory else nullcontext())
        try:
            async with asyncio.timeout_at(budget.deadline), admitted:
                if comprehensive:
                    output, related = await asyncio.gather(bound.run(ctx), self._related(ctx))
                    value: Any = {"handler": output}
                    if isinstance(related, TmwsError):
                        value.update(related_memories=None, partial=True, missing=str(related))
                        meta["partial"] = True
                    else:
                        value["related_memories"] = [msgspec.to_builtins(r) for r in related]
                else:
                    value = await bound.run(ctx)
        except TimeoutError:
            error = (f"pattern {name or pattern_type.value!r} ({pattern_type.value}) timed out "
                     f"after {timeout_ms} ms (TMWS_PATTERN_"
                     f"{'HYBRID' if comprehensive else _TIMEOUT_VAR[pattern_type]}_TIMEOUT)")
            if budget.starved or (pattern_type is not PatternType.INFRASTRUCTURE
                                  and not self._database.available):
                # Queued for a connection, or the server went away: the database's doing.
                reason: DatabaseError | OverloadedError = (
                    self._database.unreachable() if not self._database.available else
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

    async def _related(self, ctx: HandlerContext) -> list[Any] | TmwsError:
        """Memories related to the query, or the reason there are none (comprehensive mode)."""
        try:
            return await self._memory.search(ctx.namespace, ctx.topic(), limit=5)
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
