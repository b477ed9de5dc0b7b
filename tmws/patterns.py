"""Pattern library files: YAML with ``*_patterns`` lists, ``performance_targets`` and
``cache_config``.

``load_pattern_file`` validates everything, including each trigger through the Rust
core, before returning; a bad file raises PatternConfigError (or PatternCompileError)
naming the file, the pattern and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import yaml

from tmws._native import Matcher
from tmws.errors import PatternCompileError, PatternConfigError
from tmws.models import PatternDefinition, PatternLimits, PatternType

__all__ = [
    "CacheSettings",
    "LatencyTargets",
    "PatternLibrary",
    "default_library_path",
    "load_pattern_file",
    "parse_pattern_library",
    "require_patterns",
]


class LatencyTargets(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Latency goals for one pattern type, in milliseconds."""

    p50: float
    p95: float
    p99: float


class CacheSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Result-cache settings for one pattern type."""

    ttl: int = 300
    max_size: int = 1000


_DEFAULT_LIMITS = PatternLimits()
_DEFAULT_TARGETS = {
    PatternType.INFRASTRUCTURE: LatencyTargets(25, 50, 75),
    PatternType.MEMORY: LatencyTargets(50, 100, 150),
    PatternType.HYBRID: LatencyTargets(100, 200, 300),
}


class PatternLibrary(msgspec.Struct, frozen=True):
    """A validated pattern file."""

    patterns: tuple[PatternDefinition, ...]
    performance_targets: dict[PatternType, LatencyTargets]
    cache_config: dict[PatternType, CacheSettings]  # only the types the file configures
    source: str
    # Queries no pattern of this library should take (routing calibration: NONE labels).
    off_topic_examples: tuple[str, ...] = ()


class _Loader(yaml.SafeLoader):
    """Safe YAML without aliases: ``*name`` references multiply what later stages walk
    (nine aliases nine deep are 387 million nodes), and pattern files need none."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not supported in pattern files",
                event.start_mark)
        return super().compose_node(parent, index)


def default_library_path() -> Path:
    """The library shipped in the package, built from the documented defaults."""
    return Path(str(resources.files("tmws") / "data" / "default_patterns.yaml"))


def require_patterns(library: PatternLibrary, allow_empty: bool) -> None:
    """PatternConfigError for a library without patterns, unless that is wanted: a file
    emptied by mistake must not silence every instance."""
    if not library.patterns and not allow_empty:
        raise PatternConfigError(
            "defines no patterns; an empty library would answer nothing, so it is refused "
            "unless asked for explicitly (\"allow_empty\": true on reload, or "
            "TMWS_PATTERN_ALLOW_EMPTY=true)", source=library.source)


def load_pattern_file(path: str | Path, *, limits: PatternLimits | None = None
                      ) -> PatternLibrary:
    """Read and validate a pattern file (against ``limits``, default :class:`PatternLimits`)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PatternConfigError(f"cannot read pattern file: {exc.strerror}",
                                 source=source) from None
    except UnicodeDecodeError as exc:
        raise PatternConfigError(f"the pattern file is not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start})", source=source) from None
    return parse_pattern_library(text, source=source, limits=limits)


def parse_pattern_library(text: str, *, source: str = "<string>",
                          limits: PatternLimits | None = None) -> PatternLibrary:
    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PatternConfigError(f"invalid YAML{where}: {problem}", source=source) from None
    except RecursionError:
        raise PatternConfigError("the YAML nests too deeply to read", source=source) from None
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise PatternConfigError("the top level must be a mapping", source=source)

    patterns: list[PatternDefinition] = []
    seen: set[str] = set()
    for key, value in document.items():
        if key in ("performance_targets", "cache_config", "optimization_notes",
                   "off_topic_examples"):
            continue
        if not (isinstance(key, str) and key.endswith("_patterns")):
            raise PatternConfigError(
                f"unknown top-level key {key!r} (expected performance_targets, cache_config, "
                "off_topic_examples or a list named *_patterns)",
                source=source,
            )
        if value is None:
            continue
        if not isinstance(value, list):
            raise PatternConfigError(f"{key} must be a list of patterns", source=source)
        for entry in value:
            pattern = PatternDefinition.from_config(entry, source=source)
            if pattern.name in seen:
                raise PatternConfigError("duplicate pattern name", source=source,
                                         pattern=pattern.name)
            seen.add(pattern.name)
            (limits or _DEFAULT_LIMITS).check(pattern, source=source)
            try:
                Matcher.check(pattern.name, pattern.trigger_pattern)
            except PatternCompileError as exc:
                raise PatternConfigError(
                    f"trigger_pattern rejected: {exc.reason}", source=source, pattern=pattern.name
                ) from exc
            patterns.append(pattern)

    targets = _per_type(document.get("performance_targets"), LatencyTargets, _DEFAULT_TARGETS,
                        "performance_targets", source)
    # Types the file leaves out fall back to TMWS_CACHE_TTL and TMWS_CACHE_MAX_SIZE.
    cache = _per_type(document.get("cache_config"), CacheSettings, {},
                      "cache_config", source)
    off_topic = document.get("off_topic_examples") or []
    if not isinstance(off_topic, list) or not all(isinstance(q, str) for q in off_topic):
        raise PatternConfigError("off_topic_examples must be a list of strings", source=source)
    return PatternLibrary(tuple(patterns), targets, cache, source, tuple(off_topic))


def _per_type(raw: Any, struct: type[Any], defaults: Mapping[PatternType, Any], section: str,
              source: str) -> dict[PatternType, Any]:
    result = dict(defaults)
    if raw is None:
        return result
    if not isinstance(raw, Mapping):
        raise PatternConfigError(f"{section} must be a mapping of pattern type to settings",
                                 source=source)
    for type_name, settings in raw.items():
        try:
            pattern_type = PatternType(type_name)
        except ValueError:
            allowed = ", ".join(t.value for t in PatternType)
            raise PatternConfigError(
                f"{section}: unknown pattern type {type_name!r} (allowed: {allowed})", source=source
            ) from None
        try:
            result[pattern_type] = msgspec.convert(settings, struct, strict=False)
        except msgspec.ValidationError as exc:
            raise PatternConfigError(f"{section}.{type_name}: {exc}", source=source) from None
    return result
