"""The only module that imports the Rust extension; everything native is re-exported here.

``tmws.errors`` must be imported before this module (``tmws/__init__.py`` does): the extension
subclasses ``tmws.errors.PatternError`` when it initialises.
"""

from __future__ import annotations

from tmws._tmws_core import (
    ExampleIndex,
    HashEmbedder,
    Matcher,
    PatternCompileError,
    __version__,
    cache_key,
    json_too_deep,
    normalize_query,
)

__all__ = [
    "ExampleIndex",
    "HashEmbedder",
    "Matcher",
    "PatternCompileError",
    "__version__",
    "cache_key",
    "json_too_deep",
    "normalize_query",
]
