"""Embedding providers; the OpenAI-compatible one talks to a real HTTP server on loopback."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from tests.embedding_server import EmbeddingServer, running_server
from tmws._native import HashEmbedder
from tmws.config import Settings
from tmws.embeddings import (
    HashProvider,
    OpenAIProvider,
    create_provider,
    provider_identity,
)
from tmws.errors import ConfigError, EmbeddingError


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with running_server() as url:
        yield url


async def test_hash_provider_unit_vectors_and_none_for_nothing() -> None:
    provider = HashProvider(64)
    vectors = await provider.embed(["rotate jwt keys", "!!!", ""])
    assert vectors[0] is not None
    assert math.isclose(math.sqrt(sum(x * x for x in vectors[0])), 1.0, rel_tol=1e-5)
    assert vectors[1] is None and vectors[2] is None
    assert provider.model == "hash-v1"


async def test_openai_provider_batches_orders_and_normalises(server_url: str) -> None:
    EmbeddingServer.requests.clear()
    provider = OpenAIProvider(f"{server_url}/dim32", "mini", 32, api_key="sk-test",
                              batch_size=2)
    try:
        texts = ["alpha beta", "gamma", "delta epsilon", "?"]
        vectors = await provider.embed(texts)
    finally:
        await provider.aclose()
    expected = HashEmbedder(32).embed_batch(texts)
    for got, want in zip(vectors[:3], expected[:3], strict=True):
        assert got is not None and got == pytest.approx(want, abs=1e-6)
    assert vectors[3] is None  # the server's zero vector
    assert [len(r["body"]["input"]) for r in EmbeddingServer.requests] == [2, 2]
    assert EmbeddingServer.requests[0]["path"] == "/dim32/v1/embeddings"
    assert EmbeddingServer.requests[0]["auth"] == "Bearer sk-test"


@pytest.mark.parametrize(("url_suffix", "model", "dim", "timeout", "fragment"), [
    ("/dim32", "broken", 32, 5.0, "HTTP 500"),
    ("/dim16", "mini", 32, 5.0, "returned 16 dimensions; TMWS_EMBEDDING_DIM is 32"),
    ("/dim32", "slow", 32, 0.2, "TMWS_EMBEDDING_TIMEOUT"),
])
async def test_openai_provider_errors_are_clear(server_url: str, url_suffix: str, model: str,
                                               dim: int, timeout: float, fragment: str) -> None:
    provider = OpenAIProvider(server_url + url_suffix, model, dim, timeout=timeout)
    try:
        with pytest.raises(EmbeddingError, match=fragment):
            await provider.embed(["text"])
    finally:
        await provider.aclose()


async def test_unreachable_embedding_server() -> None:
    provider = OpenAIProvider("http://127.0.0.1:1", "mini", 32, timeout=1)
    try:
        with pytest.raises(EmbeddingError, match="unreachable"):
            await provider.embed(["text"])
    finally:
        await provider.aclose()


def test_settings_choose_the_provider(server_url: str) -> None:
    settings = Settings.from_env({"TMWS_EMBEDDING_PROVIDER": "openai",
                                  "TMWS_EMBEDDING_URL": server_url,
                                  "TMWS_EMBEDDING_MODEL": "mini", "TMWS_EMBEDDING_DIM": "32"})
    assert isinstance(create_provider(settings), OpenAIProvider)
    assert provider_identity(settings) == ("openai", "mini")
    assert provider_identity(Settings.from_env({})) == ("hash", "hash-v1")
    with pytest.raises(ConfigError, match="TMWS_EMBEDDING_URL"):
        Settings.from_env({"TMWS_EMBEDDING_PROVIDER": "openai", "TMWS_EMBEDDING_MODEL": "m"})
    with pytest.raises(ConfigError, match="TMWS_EMBEDDING_MODEL"):
        Settings.from_env({"TMWS_EMBEDDING_PROVIDER": "sentence-transformers"})


def test_sentence_transformers_needs_its_package() -> None:
    settings = Settings.from_env({"TMWS_EMBEDDING_PROVIDER": "sentence-transformers",
                                  "TMWS_EMBEDDING_MODEL": "/models/minilm"})
    # Whether or not the optional package is installed, the error says what to fix.
    with pytest.raises(ConfigError, match=r"pip install sentence-transformers|cannot load"):
        create_provider(settings)
