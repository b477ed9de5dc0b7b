"""The only module that imports the Rust extension; everything native is re-exported here.

The core raises its own private ``CompileFailure`` (it imports nothing from this package, so
there is no import cycle across the FFI); the ``Matcher`` here raises
:class:`tmws.errors.PatternCompileError` in its place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tmws._tmws_core import (
    CompileFailure,
    ExampleIndex,
    HashEmbedder,
    RecallIndex,
    __version__,
    cache_key,
    json_too_deep,
    normalize_query,
    stemmed_words,
)
from tmws._tmws_core import Matcher as _NativeMatcher
from tmws.errors import PatternCompileError

if TYPE_CHECKING:  # a name the stub gives a tuple type, not a runtime object
    from tmws._tmws_core import PatternSpec

__all__ = [
    "ExampleIndex",
    "HashEmbedder",
    "Matcher",
    "PatternCompileError",
    "RecallIndex",
    "__version__",
    "cache_key",
    "json_too_deep",
    "normalize_query",
    "stemmed_words",
]


def _converted(failure: CompileFailure) -> PatternCompileError:
    pattern_name, reason = failure.args
    return PatternCompileError(pattern_name, reason)


class Matcher(_NativeMatcher):
    """The native matcher (``tmws._tmws_core.Matcher``, documented there) raising
    :class:`~tmws.errors.PatternCompileError`. Searches are the native methods, unwrapped."""

    __slots__ = ()

    def __new__(cls, patterns: Sequence[PatternSpec], *, cache_capacity: int = 10_000,
                warmup: Sequence[str] = ()) -> Matcher:
        try:
            return super().__new__(cls, patterns, cache_capacity=cache_capacity,
                                   warmup=warmup)
        except CompileFailure as failure:
            raise _converted(failure) from None

    @staticmethod
    def check(name: str, regex: str) -> None:
        try:
            _NativeMatcher.check(name, regex)
        except CompileFailure as failure:
            raise _converted(failure) from None

    def replace(self, patterns: Sequence[PatternSpec], *, warmup: Sequence[str] = ()) -> int:
        try:
            return super().replace(patterns, warmup=warmup)
        except CompileFailure as failure:
            raise _converted(failure) from None
