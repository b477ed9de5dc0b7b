from __future__ import annotations

import pytest

from tmws.errors import InvalidRequestError
from tmws.memory import PREVIEW_CHARS, MemoryStore, topic_words


def test_topic_words_drop_command_words() -> None:
    assert topic_words("Recall memories about the AUTH service, auth!") == ["auth", "service"]
    assert topic_words("show me everything") == ["everything"]


async def test_store_get_delete_and_generation(store: MemoryStore, namespace: str) -> None:
    assert await store.generations.generation(namespace) == (0, 0, 0)
    memory_id = await store.store(namespace, "  disk alerts fire at 90%  ", tags=["Ops", "ops"],
                                  importance=0.7, metadata={"source": "runbook"})
    assert await store.generations.generation(namespace) == (1, 0, 0)
    record = await store.get(namespace, memory_id)
    assert record is not None
    assert record.content == "disk alerts fire at 90%" and record.tags == ["ops"]
    assert record.metadata == {"source": "runbook"}
    assert await store.get(namespace + "x", memory_id) is None  # other namespace cannot read
    assert not await store.delete(namespace + "x", memory_id)
    assert await store.delete(namespace, memory_id)
    assert await store.generations.generation(namespace) == (2, 0, 0)
    assert await store.get(namespace, memory_id) is None


async def test_long_content_is_truncated_with_a_flag(store: MemoryStore, namespace: str) -> None:
    memory_id = await store.store(namespace, "word " * 400)
    record = await store.get(namespace, memory_id)
    assert record is not None and record.truncated and len(record.content) == PREVIEW_CHARS


@pytest.mark.parametrize(("content", "importance", "fragment"), [
    ("", 0.5, "memory content is empty"), ("   ", 0.5, "memory content is empty"),
    ("x", 1.5, r"<= 1.0 - at `\$.importance`"),
    ("x" * 100_001, 0.5, r"length <= 100000 - at `\$.content`"),
])
async def test_invalid_memories_are_rejected(store: MemoryStore, namespace: str, content: str,
                                             importance: float, fragment: str) -> None:
    with pytest.raises(InvalidRequestError, match=fragment):
        await store.store(namespace, content, importance=importance)
    assert await store.count(namespace) == 0
    assert await store.generations.generation(namespace) == (0, 0, 0)


async def test_search_ranks_and_is_injection_safe(store: MemoryStore, namespace: str) -> None:
    await store.store(namespace, "the payment service retries three times")
    await store.store(namespace, "payment payment payment outage postmortem", importance=0.9)
    hits = await store.search(namespace, "payment outage")
    assert hits[0].content == "payment payment payment outage postmortem"
    assert all(h.score is not None and h.score > 0 for h in hits)
    for hostile in ["'); DROP TABLE memories; --", "a & | ! :* ( )", "\\x00 ' \""]:
        assert isinstance(await store.search(namespace, hostile), list)
    assert await store.count(namespace) == 2


async def test_recall_scope_is_the_exact_namespace(store: MemoryStore, namespace: str) -> None:
    # Namespaces may hold : @ . - _ ; the full-text index finds readable rows by them.
    odd = namespace + ":team@x.y-z_w"
    mine = await store.store(odd, "kiwi orchard harvest schedule")
    theirs = await store.store(namespace, "kiwi orchard harvest plan")
    hits = await store.search(odd, "kiwi orchard harvest")
    assert hits[0].id == mine
    assert hits[0].score == round(2 / 61, 6)  # first of both rankers: full text found it
    assert all(h.namespace == odd or h.visibility == "shared" for h in hits)
    assert theirs not in {h.id for h in await store.search(odd, "kiwi orchard harvest")}
    assert mine not in {h.id for h in await store.search(namespace, "kiwi orchard harvest")}


async def test_similar_ranks_by_embedding(store: MemoryStore, namespace: str) -> None:
    await store.store(namespace, "rotate the JWT signing keys every month")
    await store.store(namespace, "postgres vacuum settings for large tables")
    hits = await store.similar(namespace, "JWT key rotation schedule", limit=2)
    assert hits[0].content.startswith("rotate the JWT")
    assert hits[0].score is not None and hits[1].score is not None
    assert hits[0].score > hits[1].score
    assert await store.similar(namespace, "???") == []


async def test_recall_fuses_text_and_vectors(store: MemoryStore, namespace: str) -> None:
    await store.store(namespace, "optimization of the checkout flow cut latency")
    await store.store(namespace, "the office coffee machine is broken")
    # All words together match nothing, so full text falls back to any word; the vector
    # ranker agrees through shared word pieces; the unrelated memory stays out.
    hits = await store.search(namespace, "optimizing performance")
    assert [h.content for h in hits] == ["optimization of the checkout flow cut latency"]


async def test_namespaces_never_see_each_others_private_memories(
        store: MemoryStore, namespace: str) -> None:
    owner, other = namespace + "-a", namespace + "-b"
    private = await store.store(owner, "secret deploy token lives in vault", tags=["secret"],
                                importance=0.9)
    shared = await store.store(owner, "shared runbook: deploy with make release",
                               tags=["runbook"], importance=0.8, visibility="shared")
    text = "deploy token vault runbook release"
    views = {
        "get": [m.id for m in [await store.get(other, private), await store.get(other, shared)]
                if m is not None],
        "search": [m.id for m in await store.search(other, text, limit=50)],
        "similar": [m.id for m in await store.similar(other, text, limit=50)],
        "by_tag": [m.id for m in await store.by_tag(other, ["secret", "runbook"], limit=50)],
        "by_importance": [m.id for m in await store.by_importance(other, min_importance=0.0,
                                                                  limit=500)],
        "recent": [m.id for m in await store.recent(other, limit=500)],
    }
    for operation, ids in views.items():
        assert private not in ids, f"{operation} leaked a private memory"
        assert shared in ids, f"{operation} hid a shared memory"
    totals = await store.aggregate(other, "deploy")
    assert all(t["tag"] != "secret" for t in totals["top_tags"])
    assert not await store.delete(other, shared)  # shared is readable, not deletable
    assert (await store.get(owner, private)) is not None
    assert await store.delete(owner, shared)


async def test_shared_writes_change_every_namespaces_generation(store: MemoryStore,
                                                                namespace: str) -> None:
    reader = namespace + "-reader"
    before = await store.generations.generation(reader)
    shared = await store.store(namespace, "everyone should know this", visibility="shared")
    assert await store.generations.generation(reader) != before
    assert await store.delete(namespace, shared)  # shared rows are visible to every test
    with pytest.raises(InvalidRequestError, match="visibility"):
        await store.store(namespace, "x", visibility="public")


async def test_recent_within_a_window(store: MemoryStore, namespace: str) -> None:
    old = await store.store(namespace, "an old decision about queues")
    await store.database.fetch(
        "UPDATE memories SET created_at = now() - interval '10 days' WHERE id = %s", (old,))
    new = await store.store(namespace, "a new decision about queues")

    async def own(days: float | None) -> list[int]:  # other tests' shared rows are visible
        found = await store.recent(namespace, days=days, limit=100)
        return [m.id for m in found if m.namespace == namespace]

    assert await own(None) == [new, old]
    assert await own(3) == [new]
    assert await own(30) == [new, old]
