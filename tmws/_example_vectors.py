"""Stage 2 with a real embedding model: the examples' vectors, kept in step with the
pattern set, and each query's vector within the routing budget.

The lexical index always works on its own; vectors are an addition. Until they are
attached for the current pattern-set version (at start, after every change, and while the
provider is down) stage 2 scores lexically, and every decision says which scorer it used
(``RoutingDecision.scorer``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

from tmws.config import Settings
from tmws.embeddings import EmbeddingProvider
from tmws.errors import EmbeddingError
from tmws.registry import PatternRegistry

__all__ = ["ExampleVectors", "example_vectors_for"]

logger = logging.getLogger("tmws.router")

Vector = list[float]

_QUERY_CACHE_SIZE: Final = 4096
_RETRY_AFTER: Final = 30.0  # seconds between attempts to embed the examples after a failure


class ExampleVectors:
    """Embeds the registry's examples (once per text, across versions) and queries."""

    def __init__(self, registry: PatternRegistry, provider: EmbeddingProvider, *,
                 weight: float, query_timeout: float, retry_after: float = _RETRY_AFTER
                 ) -> None:
        self._registry = registry
        self._provider = provider
        self.weight = weight
        self._query_timeout = query_timeout
        self._retry_after = retry_after
        self._texts: dict[str, Vector | None] = {}
        self._queries: OrderedDict[str, Vector | None] = OrderedDict()
        self._worker: asyncio.Task[None] | None = None
        self._dirty = True
        self._failed_at: float | None = None
        self.last_error: str | None = None
        self.refreshes = 0
        self.refresh_failures = 0
        self.query_fallbacks = 0
        registry.add_listener(self.schedule)

    @property
    def model(self) -> str:
        return f"{self._provider.name}:{self._provider.model}"

    @property
    def ready(self) -> bool:
        """The current pattern set's examples have their vectors (or there are none)."""
        return self._registry.vectors_attached or self._registry.example_count == 0

    # -- examples ---------------------------------------------------------------------------

    def schedule(self) -> None:
        """The pattern set changed: embed its examples in the background."""
        self._dirty = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet: the next settled() does it
            return
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._refresh_until_clean())

    async def settled(self) -> bool:
        """Waits for pending embedding work; True when the vectors are attached."""
        if self._dirty and (self._worker is None or self._worker.done()):
            self.schedule()
        if self._worker is not None:
            await asyncio.shield(self._worker)
        return self.ready

    async def _refresh_until_clean(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self._refresh()
            except Exception as exc:  # any provider failure: routing goes on lexically
                self.refresh_failures += 1
                self._failed_at = time.monotonic()
                self.last_error = (str(exc) if isinstance(exc, EmbeddingError)
                                   else f"{type(exc).__name__}: {exc}")
                logger.warning("stage-2 routing scores lexically until the example "
                               "embeddings succeed: %s", self.last_error)
                return

    async def _refresh(self) -> None:
        version = self._registry.version
        texts = self._registry.example_texts()
        if not texts:
            return
        missing = [t for t in dict.fromkeys(texts) if t not in self._texts]
        if missing:
            self._texts.update(zip(missing, await self._provider.embed(missing), strict=True))
        if self._registry.version != version:  # changed while we waited: go again
            self._dirty = True
            return
        vectors = [self._texts[t] for t in texts]
        self._texts = dict(zip(texts, vectors, strict=True))  # forget texts no longer used
        if not self._registry.attach_vectors(vectors, self.weight):
            raise EmbeddingError(f"{self.model} gave none of the examples a vector")
        self.refreshes += 1
        self._failed_at = None
        self.last_error = None

    # -- queries ----------------------------------------------------------------------------

    async def embed_query(self, query: str) -> Vector | None:
        """The query's vector, or None (lexical only) when the examples have none yet or
        the provider cannot answer within TMWS_ROUTER_EMBEDDING_TIMEOUT."""
        if not self._registry.vectors_attached:  # not yet, or no examples at all
            self._maybe_retry()
            return None
        key = query.strip().lower()
        if key in self._queries:
            self._queries.move_to_end(key)
            return self._queries[key]
        try:
            async with asyncio.timeout(self._query_timeout):
                (vector,) = await self._provider.embed([query])
        except Exception as exc:  # timeout, provider error: this query scores lexically
            self.query_fallbacks += 1
            logger.debug("query embedding failed, scoring lexically: %s",
                         exc or "timed out")
            return None
        self._queries[key] = vector
        if len(self._queries) > _QUERY_CACHE_SIZE:
            self._queries.popitem(last=False)
        return vector

    async def embed_queries(self, queries: Sequence[str]) -> dict[str, Vector | None]:
        """Vectors of many queries in batches, for calibration; raises EmbeddingError when
        the examples have no vectors (the provider failed) or the provider fails now."""
        if not await self.settled():
            raise EmbeddingError(f"the pattern examples could not be embedded with "
                                 f"{self.model}: {self.last_error or 'no vectors'}")
        unique = list(dict.fromkeys(queries))
        return dict(zip(unique, await self._provider.embed(unique), strict=True))

    def _maybe_retry(self) -> None:
        """Pending work that never started (no event loop at the change), or a failure
        long enough ago: try again."""
        if self._worker is not None and not self._worker.done():
            return
        if self._failed_at is None:
            if self._dirty:
                self.schedule()
        elif time.monotonic() - self._failed_at >= self._retry_after:
            self._dirty = True
            self.schedule()

    async def aclose(self) -> None:
        """Stops embedding work in flight (the provider is closed by its owner)."""
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"model": self.model, "weight": self.weight, "ready": self.ready,
                "refreshes": self.refreshes, "refresh_failures": self.refresh_failures,
                "query_fallbacks": self.query_fallbacks, "last_error": self.last_error}


def example_vectors_for(settings: Settings, registry: PatternRegistry,
                        provider: EmbeddingProvider) -> ExampleVectors | None:
    """Vectors for stage 2 when a real model is configured. The built-in ``hash`` embedder
    measures the same lexical overlap the TF-IDF index already scores, so it adds nothing."""
    if provider.name == "hash" or settings.router_semantic_weight == 0.0:
        return None
    return ExampleVectors(registry, provider, weight=settings.router_semantic_weight,
                          query_timeout=settings.router_embedding_timeout / 1000)
