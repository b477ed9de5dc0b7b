"""Changing the pattern set: register, unregister, reload — checked, applied through the
pattern group (:mod:`tmws._pattern_sync`) when the engine has joined one, and audited once,
whichever way in (HTTP, CLI, the Python API) asked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from tmws._pattern_sync import PatternSets, Propagation, StoredSet
from tmws.audit import AuditLog
from tmws.config import Settings
from tmws.errors import (
    DatabaseError,
    PatternError,
    PatternExistsError,
    PatternNotFoundError,
)
from tmws.models import PatternDefinition
from tmws.patterns import (
    PatternLibrary,
    default_library_path,
    load_pattern_file,
    require_patterns,
)
from tmws.registry import PatternRegistry, fingerprint_of
from tmws.router import HybridRouter

__all__ = ["CheckPatterns", "PatternChange", "PatternChanges"]

# check(patterns, source): PatternConfigError for the first pattern whose handler cannot run.
CheckPatterns = Callable[[Sequence[PatternDefinition], str], None]
Mutation = Callable[[StoredSet], tuple[list[PatternDefinition], str]]


class PatternChange(msgspec.Struct, frozen=True, kw_only=True):
    """What a pattern change did: ``pattern`` is the registered or removed one (None for a
    reload), ``patterns`` the size of the new set, ``propagation`` how far it has reached."""

    action: str
    target: str
    patterns: int
    propagation: Propagation
    pattern: PatternDefinition | None = None


class PatternChanges:
    """The pattern-change operations of one engine."""

    def __init__(self, settings: Settings, registry: PatternRegistry, router: HybridRouter,
                 audit: AuditLog, check: CheckPatterns) -> None:
        self._settings = settings
        self._registry = registry
        self._router = router
        self._audit = audit
        self._check = check
        self.sync: PatternSets | None = None  # set once the engine joins its group

    async def register(self, pattern: PatternDefinition | Mapping[str, Any], *,
                       replace: bool, actor: str) -> PatternChange:
        if not isinstance(pattern, PatternDefinition):
            name = pattern.get("name")
            try:
                pattern = PatternDefinition.from_config(pattern, source="request")
            except PatternError:
                self._audit.record(actor, "pattern.register",
                                   target=name if isinstance(name, str) else None,
                                   outcome="invalid_pattern")
                raise
        registered = pattern

        def mutate(current: StoredSet) -> tuple[list[PatternDefinition], str]:
            names = [p.name for p in current.patterns]
            if registered.name in names and not replace:
                raise PatternExistsError(registered.name)
            self._check([registered], "request")
            patterns = [registered if p.name == registered.name else p
                        for p in current.patterns]
            if registered.name not in names:
                patterns.append(registered)
            return patterns, current.base

        change = await self._apply(mutate, "pattern.register", actor, registered.name,
                                   detail={"replace": replace,
                                           "pattern_type": registered.pattern_type.value})
        return msgspec.structs.replace(change, pattern=registered)

    async def unregister(self, name: str, *, actor: str) -> PatternChange:
        removed: list[PatternDefinition] = []

        def mutate(current: StoredSet) -> tuple[list[PatternDefinition], str]:
            removed[:] = [p for p in current.patterns if p.name == name]
            if not removed:
                raise PatternNotFoundError(name)
            return [p for p in current.patterns if p.name != name], current.base

        change = await self._apply(mutate, "pattern.delete", actor, name)
        return msgspec.structs.replace(change, pattern=removed[0])

    async def reload(self, *, allow_empty: bool | None, actor: str
                     ) -> tuple[PatternChange, PatternLibrary]:
        """The change and the library it installed."""
        source = self._settings.pattern_config or default_library_path()
        try:
            library = await asyncio.to_thread(load_pattern_file, source,
                                              limits=self._settings.pattern_limits)
            require_patterns(library, self._settings.pattern_allow_empty
                             if allow_empty is None else allow_empty)
            self._check(library.patterns, library.source)
        except PatternError:
            self._audit.record(actor, "pattern.reload", target=str(source),
                               outcome="invalid_pattern")
            raise
        change = await self._apply(
            lambda current: (list(library.patterns), fingerprint_of(library.patterns)),
            "pattern.reload", actor, str(source))
        return change, library

    async def _apply(self, mutate: Mutation, action: str, actor: str, target: str, *,
                     detail: dict[str, Any] | None = None) -> PatternChange:
        """Apply a change through the group (or, before the engine joins one, here only)."""
        try:
            if self.sync is None:
                registry = self._registry
                current = StoredSet(registry.shared_version or 0, registry.fingerprint,
                                    registry.patterns())
                patterns, _ = mutate(current)
                prepared = registry.prepare(patterns)
                registry.install(prepared)
                propagation = Propagation(registry.version, prepared.fingerprint, 1, 1,
                                          True, 0.0)
            else:
                prepared, propagation = await self.sync.change(
                    mutate, action=action, actor=actor, target=target)
        except (PatternError, DatabaseError) as exc:
            self._audit.record(actor, action, target=target, outcome=_refusal(exc))
            raise
        self._audit.record(actor, action, target=target, outcome="success",
                           detail={**(detail or {}), "version": propagation.version,
                                   "patterns": len(prepared.patterns)})
        await self._router.settled()  # its examples count in stage 2 once this returns
        return PatternChange(action=action, target=target, patterns=len(prepared.patterns),
                             propagation=propagation)


def _refusal(exc: PatternError | DatabaseError) -> str:
    """The audit outcome of a refused change (the subclasses first)."""
    if isinstance(exc, PatternNotFoundError):
        return "not_found"
    if isinstance(exc, PatternExistsError):
        return "exists"
    return "invalid_pattern" if isinstance(exc, PatternError) else "database_unavailable"
