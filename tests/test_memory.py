from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import make_settings
from tmws.database import Database
from tmws.embeddings import HashProvider
from tmws.errors import InvalidRequestError
from tmws.memory import PREVIEW_CHARS, MemoryStore, topic_words


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[MemoryStore]:
    settings = make_settings(database_url)
    database = Database(database_url, settings)
    await database.open()
    yield MemoryStore(database, HashProvider(settings.embedding_dim))
    await database.close()


def test_topic_words_drop_command_words() -> None:
    assert topic_words("Recall memories about the AUTH service, auth!") == ["auth", "service"]
    assert topic_words("show me everything") == ["everything"]


async def test_store_get_delete_and_generation(store: MemoryStore, namespace: str) -> None:
    assert store.generation(namespace) == (0, 0)
    memory_id = await store.store(namespace, "  disk alerts fire at 90%  ", tags=["Ops", "ops"],
                                  importance=0.7, metadata={"source": "runbook"})
    assert store.generation(namespace) == (1, 0)
    record = await store.get(namespace, memory_id)
    assert record is not None
    assert record.content == "disk alerts fire at 90%" and record.tags == ["ops"]
    assert record.metadata == {"source": "runbook"}
    assert await store.get(namespace + "x", memory_id) is None  # other namespace cannot read
    assert not await store.delete(namespace + "x", memory_id)
    assert await store.delete(namespace, memory_id)
    assert store.generation(namespace) == (2, 0)
    assert await store.get(namespace, memory_id) is None


async def test_long_content_is_truncated_with_a_flag(store: MemoryStore, namespace: str) -> None:
    memory_id = await store.store(namespace, "word " * 400)
    record = await store.get(namespace, memory_id)
    assert record is not None and record.truncated and len(record.content) == PREVIEW_CHARS


@pytest.mark.parametrize(("content", "importance", "fragment"), [
    ("", 0.5, "empty"), ("   ", 0.5, "empty"), ("x", 1.5, "between 0 and 1"),
    ("x" * 100_001, 0.5, "limit is 100000"),
])
async def test_invalid_memories_are_rejected(store: MemoryStore, namespace: str, content: str,
                                             importance: float, fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        await store.store(namespace, content, importance=importance)
    assert await store.count(namespace) == 0
    assert store.generation(namespace) == (0, 0)


async def test_search_ranks_and_is_injection_safe(store: MemoryStore, namespace: str) -> None:
    await store.store(namespace, "the payment service retries three times")
    await store.store(namespace, "payment payment payment outage postmortem", importance=0.9)
    hits = await store.search(namespace, "payment outage")
    assert hits[0].content == "payment payment payment outage postmortem"
    assert all(h.score is not None and h.score > 0 for h in hits)
    for hostile in ["'); DROP TABLE memories; --", "a & | ! :* ( )", "\\x00 ' \""]:
        assert isinstance(await store.search(namespace, hostile), list)
    assert await store.count(namespace) == 2
