"""``tmws initialize``: the ``initialize_patterns`` step (deploy/README.md, Step 5).

Loads and validates the configured pattern file (every trigger compiled by the Rust core,
every handler bound), builds the matcher and the router's example index as the service
does, routes each pattern's example queries through them, and reports what is active. The
service itself loads the file at start and shares it with the instances of its group
(``POST /api/v1/patterns/reload`` re-reads it); this command changes nothing anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec

from tmws.config import Settings
from tmws.errors import PatternConfigError
from tmws.lexicon import RoutingLexicon
from tmws.models import ExecutionMode

__all__ = ["ActivePattern", "InitializeReport", "format_initialize", "initialize_patterns"]


class ActivePattern(msgspec.Struct, frozen=True):
    """One pattern as loaded, and how many of its example queries route back to it."""

    name: str
    pattern_type: str
    priority: int
    handler: str
    examples: int
    routed: int
    misrouted: list[str]  # "query -> where it went"


class InitializeReport(msgspec.Struct, frozen=True):
    source: str
    patterns: list[ActivePattern]
    fingerprint: str
    scorer: str  # what stage 2 scores with: lexical, or lexical plus the embedding model


async def initialize_patterns(settings: Settings, source: str | Path | None = None
                              ) -> InitializeReport:
    """Load ``source`` (default: TMWS_PATTERN_CONFIG or the shipped library), validate it
    and warm a router with it. PatternConfigError (or PatternCompileError) if the file
    cannot be used, naming the file, the pattern and the problem."""
    from tmws._example_vectors import example_vectors_for
    from tmws.embeddings import create_provider
    from tmws.handlers import HANDLERS, check_pattern_handler, resolve_handler
    from tmws.patterns import default_library_path, load_pattern_file, require_patterns
    from tmws.registry import PatternRegistry
    from tmws.router import HybridRouter

    path = source or settings.pattern_config or default_library_path()
    library = load_pattern_file(path, limits=settings.pattern_limits)
    require_patterns(library, settings.pattern_allow_empty)
    for pattern in library.patterns:
        problem = check_pattern_handler(pattern, HANDLERS)
        if problem is not None:
            raise PatternConfigError(problem, source=library.source, pattern=pattern.name)
    registry = PatternRegistry(library.patterns, limits=settings.pattern_limits,
                               lexicon=RoutingLexicon.shipped(settings.router_lexicon))
    provider = create_provider(settings)
    try:
        router = HybridRouter(registry, min_score=settings.router_min_score,
                              min_margin=settings.router_min_margin,
                              vectors=example_vectors_for(settings, registry, provider))
        embedded = await router.settled()  # the examples' vectors, with a model configured
        mode = ExecutionMode.BALANCED
        active = []
        for pattern in library.patterns:
            examples = pattern.routing_examples
            misrouted = []
            for query in examples:
                decision = await router.route(query, mode)
                if decision.pattern_name != pattern.name:
                    misrouted.append(f"{query} -> {decision.pattern_name or 'no pattern'}")
            active.append(ActivePattern(
                pattern.name, pattern.pattern_type.value, pattern.priority,
                resolve_handler(pattern, pattern.pattern_type, HANDLERS), len(examples),
                len(examples) - len(misrouted), misrouted))
    finally:
        if router.vectors is not None:
            await router.vectors.aclose()
        await provider.aclose()
    scorer = "lexical" if router.vectors is None else (
        f"lexical+{provider.name}:{provider.model}" if embedded
        else "lexical (the embedding model failed; see the log)")
    return InitializeReport(library.source, active, registry.fingerprint, scorer)


def format_initialize(report: InitializeReport) -> str:
    rows: Sequence[tuple[str, ...]] = [
        ("pattern", "type", "priority", "handler", "examples routed"),
        *((p.name, p.pattern_type, str(p.priority), p.handler, f"{p.routed}/{p.examples}")
          for p in report.patterns)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                       ).rstrip() for row in rows]
    for pattern in report.patterns:
        lines += [f"  {pattern.name}: {miss}" for miss in pattern.misrouted]
    routed = sum(p.routed for p in report.patterns)
    total = sum(p.examples for p in report.patterns)
    lines.append(f"\n{report.source}: {len(report.patterns)} patterns active (fingerprint "
                 f"{report.fingerprint[:12]}); {routed}/{total} example queries route to "
                 f"their pattern (stage 2: {report.scorer})")
    return "\n".join(lines)
