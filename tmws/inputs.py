"""What callers may send: one definition per input rule.

Every way in uses these types — the HTTP bodies (:mod:`tmws.http.schemas`), the execute context
the handlers read, :meth:`tmws.memory.MemoryStore.store`, bulk import lines and token
subjects — so a namespace, a memory or a context field means the same thing everywhere
and is refused with the same message.

Limits that depend on the deployment are settings (:class:`InputLimits`, read from
``TMWS_MAX_JSON_DEPTH`` and ``TMWS_MAX_METADATA_BYTES``); the rest are fixed here:

=====================  ==========================================================
namespace              1-128 characters from ``A-Z a-z 0-9 _ . : @ -``
content                1-100,000 characters, not blank
memory_type            1-64 characters, not blank
tags                   at most 64, each at most 128 characters (trimmed, lower-cased)
importance             0..1
visibility             ``private`` or ``shared``
limit                  1..100
days                   more than 0, at most 36,500 (100 years)
search text            at most 2,000 characters (``topic``, ``left``, ``right``)
memory id              1 .. 2**63 - 1, ASCII digits
=====================  ==========================================================
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from tmws._native import json_too_deep
from tmws.errors import InvalidRequestError

__all__ = [
    "DEFAULT_NAMESPACE",
    "MAX_CONTENT_CHARS",
    "MAX_MEMORY_ID",
    "NAMESPACE_PATTERN",
    "VISIBILITIES",
    "Content",
    "Days",
    "ExecutionContext",
    "Importance",
    "InputLimits",
    "Limit",
    "MemoryInput",
    "MemoryType",
    "Namespace",
    "SearchText",
    "Tags",
    "Visibility",
    "check_depth",
    "check_json_depth",
    "check_metadata",
    "check_namespace",
    "contains_nul",
    "convert",
    "explain",
    "memory_id",
    "valid_namespace",
]

T = TypeVar("T")

DEFAULT_NAMESPACE: Final = "default"
# msgspec searches with Python's re, where ``$`` also matches before a final newline:
# the lookahead keeps "team\n" out (and reads the same in JSON Schema's ECMA dialect).
NAMESPACE_PATTERN: Final = r"^[A-Za-z0-9_.:@-]{1,128}(?!\n)$"
_NAMESPACE: Final = re.compile(NAMESPACE_PATTERN)
MAX_CONTENT_CHARS: Final = 100_000
MAX_MEMORY_ID: Final = 2**63 - 1  # PostgreSQL bigint
VISIBILITIES: Final = ("private", "shared")
_ID: Final = re.compile(r"[0-9]{1,19}")
_FLOAT4: Final = struct.Struct("<f")

Namespace = Annotated[str, msgspec.Meta(
    min_length=1, max_length=128, pattern=NAMESPACE_PATTERN,
    description="The owning agent or team. With auth on, the token's subject; another "
                "namespace is refused (403).")]
# Blank content or memory_type is refused by MemoryInput itself, with words to match.
Content = Annotated[str, msgspec.Meta(max_length=MAX_CONTENT_CHARS)]
MemoryType = Annotated[str, msgspec.Meta(max_length=64)]
Tag = Annotated[str, msgspec.Meta(max_length=128)]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=64)]
Importance = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Visibility = Literal["private", "shared"]
Limit = Annotated[int, msgspec.Meta(ge=1, le=100)]
Days = Annotated[float, msgspec.Meta(gt=0.0, le=36_500.0)]
SearchText = Annotated[str, msgspec.Meta(max_length=2000)]


class InputLimits(msgspec.Struct, frozen=True):
    """The deployment's bounds on free-form JSON: how deeply it may nest (whole request
    bodies and memory metadata) and how large memory metadata may be, encoded."""

    max_json_depth: int = 32
    max_metadata_bytes: int = 16_384


class MemoryInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A memory to store: ``POST /api/v1/memories``, the ``store_memory`` handler, the
    Python API and bulk import all build one (and are refused alike)."""

    content: Content
    memory_type: MemoryType = "general"
    importance: Importance = 0.5
    tags: Tags = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    visibility: Visibility = "private"

    def __post_init__(self) -> None:
        self.content = self.content.strip()
        if not self.content:
            raise ValueError("memory content is empty")
        for field, text in (("content", self.content), ("memory_type", self.memory_type),
                            *(("tags", tag) for tag in self.tags)):
            if "\x00" in text:
                raise ValueError(f"{field} contains a NUL character (\\u0000), which "
                                 "PostgreSQL cannot store")
        self.memory_type = self.memory_type.strip()
        if not self.memory_type:
            raise ValueError("memory_type is empty")
        self.tags = sorted({tag.strip().lower() for tag in self.tags if tag.strip()})
        # The column is a 4-byte float: what it cannot hold (5e-324) is stored as it would be
        # read back, rather than refused by the database after everything else passed.
        self.importance = _FLOAT4.unpack(_FLOAT4.pack(self.importance))[0]


class ExecutionContext(msgspec.Struct, kw_only=True):
    """The fields of ``context`` the built-in handlers read. Other keys pass through to
    bound handlers unchecked (they still count in the result-cache key)."""

    namespace: Namespace = DEFAULT_NAMESPACE
    request_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    # store_memory
    content: Content | None = None
    memory_type: MemoryType | None = None
    importance: Importance | None = None
    tags: Tags | None = None
    metadata: dict[str, Any] | None = None
    visibility: Visibility | None = None
    # reads
    limit: Limit | None = None
    tag: Tag | None = None
    topic: SearchText | None = None
    min_importance: Importance | None = None
    days: Days | None = None
    left: SearchText | None = None
    right: SearchText | None = None


def convert(value: Any, target: type[T], where: str = "") -> T:
    """``value`` checked and converted to ``target``; InvalidRequestError naming the field
    (``where`` prefixes msgspec's ``$`` path, e.g. ``context``)."""
    try:
        return msgspec.convert(value, target)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(explain(exc, where)) from None


def explain(exc: msgspec.ValidationError, where: str = "") -> str:
    """msgspec's message for a refused value, worded for people and located at ``where``
    (replacing ``$``): "missing required field `content`", "Expected `float` <= 1.0 - at
    `$.importance`"."""
    message = str(exc).replace("Object contains unknown field", "unknown field") \
        .replace("Object missing required field", "missing required field")
    if not where:
        return message
    if "- at `$" in message:
        return message.replace("- at `$", f"- at `{where}", 1)
    return f"{message} - at `{where}`"


def valid_namespace(value: object) -> bool:
    return isinstance(value, str) and _NAMESPACE.fullmatch(value) is not None


def check_namespace(value: object, where: str = "namespace") -> str:
    """``value`` if it is a namespace, else InvalidRequestError naming ``where``."""
    if not valid_namespace(value):
        shown = repr(value[:40]) if isinstance(value, str) else type(value).__name__
        raise InvalidRequestError(
            f"{where} must be 1 to 128 characters from A-Z a-z 0-9 _ . : @ - (got {shown})")
    assert isinstance(value, str)
    return value


def memory_id(text: str, where: str = "`{id}`") -> int:
    """A memory id from a path segment: ASCII digits only (superscript and fullwidth digits are not
    here), 1 to 2**63 - 1."""
    if _ID.fullmatch(text) is None or not 1 <= int(text) <= MAX_MEMORY_ID:
        raise InvalidRequestError(
            f"memory id must be an integer from 1 to {MAX_MEMORY_ID} (got {text[:40]!r}) "
            f"- at {where}")
    return int(text)


def check_json_depth(data: bytes, limit: int, where: str = "the body") -> None:
    """InvalidRequestError if the JSON text ``data`` nests deeper than ``limit``."""
    offset = json_too_deep(data, limit)
    if offset is not None:
        raise InvalidRequestError(
            f"{where} nests deeper than {limit} levels (at byte {offset}); the limit is "
            "TMWS_MAX_JSON_DEPTH")


_encoder = msgspec.json.Encoder()


def check_metadata(metadata: Mapping[str, Any], limits: InputLimits,
                   where: str = "metadata") -> None:
    """InvalidRequestError unless ``metadata`` nests at most ``limits.max_json_depth``
    levels and encodes to at most ``limits.max_metadata_bytes`` bytes of JSON.

    The depth is checked on the objects, without recursion, before anything encodes them:
    a structure too deep to encode must be refused, not crash the encoder.
    """
    check_depth(metadata, limits.max_json_depth, where)
    try:
        encoded = _encoder.encode(metadata)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequestError(f"{where} is not JSON: {exc}") from None
    if b"\\u0000" in encoded and contains_nul(metadata):  # (the bytes may be an escaped "\\")
        raise InvalidRequestError(f"{where} contains a NUL character (\\u0000), which "
                                  "PostgreSQL cannot store")
    size = len(encoded)
    if size > limits.max_metadata_bytes:
        raise InvalidRequestError(
            f"{where} is {size} bytes as JSON; the limit is {limits.max_metadata_bytes} "
            "(TMWS_MAX_METADATA_BYTES)")


def check_depth(value: Any, limit: int, where: str) -> None:
    """InvalidRequestError if the mappings and lists in ``value`` nest deeper than
    ``limit`` levels (walked without recursion, so any depth is safe to check)."""
    path = _too_deep(value, limit)
    if path is not None:
        raise InvalidRequestError(
            f"{where} nests deeper than {limit} levels (at `{where}{path}`); the limit is "
            "TMWS_MAX_JSON_DEPTH")


def contains_nul(value: Any) -> bool:
    """Whether a string anywhere in ``value`` (keys included) holds a NUL character, which
    PostgreSQL stores in neither text nor jsonb."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


_CONTAINERS: Final = (Mapping, list, tuple)


def _too_deep(value: Any, limit: int) -> str | None:
    """The path of the first container below ``limit`` levels, or None."""
    if not isinstance(value, _CONTAINERS):
        return None
    # Only containers are stacked: a flat context of strings costs one pass, no tuples.
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if depth > limit:
            return path
        if isinstance(item, Mapping):
            stack.extend((child, depth + 1, f"{path}.{key}") for key, child in item.items()
                         if isinstance(child, _CONTAINERS))
        else:
            stack.extend((child, depth + 1, f"{path}[{index}]")
                         for index, child in enumerate(item) if isinstance(child, _CONTAINERS))
    return None
