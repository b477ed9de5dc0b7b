"""Embedding providers: text in, unit-length vectors out.

- ``hash`` (default): feature hashing in the Rust core — fast, offline, deterministic. It
  measures *lexical* similarity (shared words, word pairs and word pieces), not meaning:
  "car" and "automobile" are unrelated to it.
- ``openai``: any OpenAI-compatible ``/v1/embeddings`` server (OpenAI, Ollama, vLLM, TEI).
- ``sentence-transformers``: a local model directory (optional dependency).

A text with nothing to embed yields ``None`` (stored as NULL): a zero vector has no
cosine distance.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, Protocol

import httpx

from tmws._native import HashEmbedder
from tmws.config import Settings
from tmws.errors import ConfigError, EmbeddingError

__all__ = [
    "EmbeddingProvider",
    "HashProvider",
    "OpenAIProvider",
    "SentenceTransformersProvider",
    "create_provider",
    "provider_identity",
]

Vector = list[float]


class EmbeddingProvider(Protocol):
    name: str
    model: str
    dim: int

    async def embed(self, texts: Sequence[str]) -> list[Vector | None]: ...

    async def aclose(self) -> None: ...


def _unit_or_none(vector: Sequence[float], dim: int, source: str) -> Vector | None:
    if len(vector) != dim:
        raise EmbeddingError(f"{source} returned {len(vector)} dimensions; TMWS_EMBEDDING_DIM "
                             f"is {dim}")
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0 or math.isnan(norm):
        return None
    if abs(norm - 1.0) < 1e-4:
        return list(vector)
    return [x / norm for x in vector]


class HashProvider:
    """The built-in feature-hashing embedder (see the module docstring for its limits)."""

    name = "hash"

    def __init__(self, dim: int) -> None:
        self._embedder = HashEmbedder(dim)
        self.dim = dim
        self.model = self._embedder.algorithm

    async def embed(self, texts: Sequence[str]) -> list[Vector | None]:
        # Microseconds per text: cheaper inline than a thread hop for request-sized batches.
        if len(texts) > 256:
            rows = await asyncio.to_thread(self._embedder.embed_batch, list(texts))
        else:
            rows = self._embedder.embed_batch(list(texts))
        return [row if any(row) else None for row in rows]

    async def aclose(self) -> None:
        return None


class OpenAIProvider:
    """``POST {url}/v1/embeddings`` in batches, as OpenAI, Ollama, vLLM and TEI serve it."""

    name = "openai"

    def __init__(self, url: str, model: str, dim: int, *, api_key: str | None = None,
                 timeout: float = 10.0, batch_size: int = 64) -> None:
        self.model = model
        self.dim = dim
        self._batch_size = batch_size
        base = url.rstrip("/")
        self._endpoint = base if base.endswith("/embeddings") else (
            base + ("/embeddings" if base.endswith("/v1") else "/v1/embeddings"))
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def embed(self, texts: Sequence[str]) -> list[Vector | None]:
        result: list[Vector | None] = []
        for start in range(0, len(texts), self._batch_size):
            result.extend(await self._batch(list(texts[start:start + self._batch_size])))
        return result

    async def _batch(self, texts: list[str]) -> list[Vector | None]:
        where = f"embedding server {self._endpoint}"
        try:
            response = await self._client.post(self._endpoint,
                                                json={"model": self.model, "input": texts})
        except httpx.TimeoutException:
            raise EmbeddingError(f"{where} did not answer within the timeout "
                                 "(TMWS_EMBEDDING_TIMEOUT)") from None
        except httpx.HTTPError as exc:
            raise EmbeddingError(f"{where} is unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise EmbeddingError(f"{where} answered HTTP {response.status_code}: "
                                 f"{response.text[:200]}")
        try:
            data: Any = response.json()["data"]
            rows = sorted(data, key=lambda item: item.get("index", 0))
            vectors = [row["embedding"] for row in rows]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EmbeddingError(f"{where} answered without a data[].embedding list") from None
        if len(vectors) != len(texts):
            raise EmbeddingError(f"{where} returned {len(vectors)} embeddings for "
                                 f"{len(texts)} texts")
        return [_unit_or_none(v, self.dim, where) for v in vectors]

    async def aclose(self) -> None:
        await self._client.aclose()


class SentenceTransformersProvider:
    """A local sentence-transformers model (``pip install sentence-transformers``)."""

    name = "sentence-transformers"

    def __init__(self, model_path: str, dim: int, *, batch_size: int = 64) -> None:
        try:
            from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("TMWS_EMBEDDING_PROVIDER", "sentence-transformers is not "
                              "installed: pip install sentence-transformers") from None
        try:
            self._model = SentenceTransformer(model_path)
        except Exception as exc:  # missing files, bad format: all mean "fix the path"
            raise ConfigError("TMWS_EMBEDDING_MODEL",
                              f"cannot load model {model_path}: {exc}") from None
        self.model = model_path
        self.dim = dim
        self._batch_size = batch_size
        actual = self._model.get_sentence_embedding_dimension()
        if actual != dim:
            raise ConfigError("TMWS_EMBEDDING_DIM", f"model {model_path} makes {actual}-"
                              f"dimensional embeddings, not {dim}")

    async def embed(self, texts: Sequence[str]) -> list[Vector | None]:
        rows = await asyncio.to_thread(self._model.encode, list(texts),
                                       batch_size=self._batch_size, normalize_embeddings=True)
        return [_unit_or_none([float(x) for x in row], self.dim, self.model) for row in rows]

    async def aclose(self) -> None:
        return None


def provider_identity(settings: Settings) -> tuple[str, str]:
    """(provider, model) as recorded beside the stored vectors."""
    if settings.embedding_provider == "hash":
        return "hash", HashEmbedder(settings.embedding_dim).algorithm
    assert settings.embedding_model is not None  # Settings.validate requires it
    return settings.embedding_provider, settings.embedding_model


def create_provider(settings: Settings) -> EmbeddingProvider:
    if settings.embedding_provider == "openai":
        assert settings.embedding_url is not None and settings.embedding_model is not None
        return OpenAIProvider(settings.embedding_url, settings.embedding_model,
                              settings.embedding_dim, api_key=settings.embedding_api_key,
                              timeout=settings.embedding_timeout,
                              batch_size=settings.embedding_batch_size)
    if settings.embedding_provider == "sentence-transformers":
        assert settings.embedding_model is not None
        return SentenceTransformersProvider(settings.embedding_model, settings.embedding_dim,
                                            batch_size=settings.embedding_batch_size)
    return HashProvider(settings.embedding_dim)
