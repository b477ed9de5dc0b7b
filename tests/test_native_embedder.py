"""Python-level tests of the native lexical embedder (``tmws._native.HashEmbedder``)."""

from __future__ import annotations

import math
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest

import tmws._native
from tmws._native import HashEmbedder


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(v: list[float]) -> float:
    return math.sqrt(cosine(v, v))


@pytest.fixture(scope="module")
def embedder() -> HashEmbedder:
    return HashEmbedder()


def test_exported() -> None:
    assert "HashEmbedder" in tmws._native.__all__


def test_defaults(embedder: HashEmbedder) -> None:
    assert embedder.dim == 384
    assert embedder.algorithm == "hash-v1"
    assert repr(embedder) == '<HashEmbedder dim=384 algorithm="hash-v1">'
    assert HashEmbedder(dim=8).dim == 8


@pytest.mark.parametrize("dim", [0, 7, 16001, -1, 10**6])
def test_bad_dim(dim: int) -> None:
    with pytest.raises(ValueError, match=r"between 8 and 16000"):
        HashEmbedder(dim)


@pytest.mark.parametrize("dim", [8, 384, 16000])
def test_dimension_and_unit_norm(dim: int) -> None:
    embedder = HashEmbedder(dim)
    for text in ["a", "rotate the JWT signing keys", "Straße", "日本語"]:
        vector = embedder.embed(text)
        assert len(vector) == dim
        assert norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_deterministic(embedder: HashEmbedder) -> None:
    text = "rotate the JWT signing keys"
    assert embedder.embed(text) == embedder.embed(text)
    assert HashEmbedder(384).embed(text) == embedder.embed(text)


@pytest.mark.parametrize("text", ["", "  \n\t", "!!! ... --- ?"])
def test_featureless_text_is_zero(embedder: HashEmbedder, text: str) -> None:
    assert embedder.embed(text) == [0.0] * 384


def test_case_and_punctuation_insensitive(embedder: HashEmbedder) -> None:
    expected = embedder.embed("rotate the jwt signing keys")
    assert embedder.embed("Rotate the JWT Signing KEYS") == expected
    assert embedder.embed("rotate, the JWT-signing keys!") == expected
    assert embedder.embed("ΟΔΟΣ") == embedder.embed("οδος")


def test_unicode_words(embedder: HashEmbedder) -> None:
    strasse = embedder.embed("Straße")
    assert cosine(strasse, embedder.embed("Straßenbahn")) > cosine(
        strasse, embedder.embed("Wetter")
    )
    japanese = embedder.embed("日本語のテキスト")
    assert cosine(japanese, embedder.embed("日本語")) > cosine(japanese, embedder.embed("英語"))


def test_golden_values(embedder: HashEmbedder) -> None:
    # Same values as rust_core/tests/embed.rs: a failure means the algorithm changed.
    vector = embedder.embed("Rotate the JWT signing keys!")
    assert sum(1 for x in vector if x) == 55
    assert vector[1] == struct.unpack("<f", struct.pack("<f", 0.22540624))[0]
    assert vector[53] == struct.unpack("<f", struct.pack("<f", -0.29491943))[0]


@pytest.mark.parametrize(
    ("anchor", "related", "unrelated"),
    [
        ("rotate the JWT signing keys", "JWT key rotation schedule", "postgres vacuum settings"),
        ("optimization", "optimize", "authentication"),
        ("query optimization tips", "how to optimize a slow query", "postgres vacuum settings"),
        ("migrate the schema", "schema migration failed", "migrant birds"),
    ],
)
def test_related_ranks_above_unrelated(
    embedder: HashEmbedder, anchor: str, related: str, unrelated: str
) -> None:
    a = embedder.embed(anchor)
    assert cosine(a, embedder.embed(related)) > cosine(a, embedder.embed(unrelated))


TEXTS = ["rotate the JWT signing keys", "", "postgres vacuum settings", "日本語"]


def test_batch_equals_single(embedder: HashEmbedder) -> None:
    assert embedder.embed_batch(TEXTS) == [embedder.embed(t) for t in TEXTS]
    assert embedder.embed_batch(tuple(TEXTS)) == embedder.embed_batch(TEXTS)
    assert embedder.embed_batch([]) == []


def test_bytes_round_trip(embedder: HashEmbedder) -> None:
    data = embedder.embed_batch_bytes(TEXTS)
    assert isinstance(data, bytes)
    assert len(data) == len(TEXTS) * 384 * 4
    # Explicitly little-endian, the layout numpy.frombuffer(data, "<f4") reads.
    values = list(struct.unpack(f"<{len(TEXTS) * 384}f", data))
    rows = [values[i * 384 : (i + 1) * 384] for i in range(len(TEXTS))]
    assert rows == embedder.embed_batch(TEXTS)
    assert embedder.embed_batch_bytes([]) == b""


def test_rejects_non_str(embedder: HashEmbedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed_batch("a single string")
    with pytest.raises(TypeError):
        embedder.embed_batch_bytes(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        embedder.embed(None)  # type: ignore[arg-type]


def test_frozen(embedder: HashEmbedder) -> None:
    with pytest.raises(AttributeError):
        embedder.dim = 8  # type: ignore[misc]


def test_threads_agree(embedder: HashEmbedder) -> None:
    texts = [f"text number {i} about keys and rotation" for i in range(200)]
    expected = embedder.embed_batch_bytes(texts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: embedder.embed_batch_bytes(texts), range(8)))
    assert all(r == expected for r in results)
