from __future__ import annotations

import json

import psycopg
import psycopg.sql
import pytest

from tests.conftest import make_settings
from tests.test_cli import run as run_cli
from tmws.database import upgrade
from tmws.engine import create_pattern_execution_engine
from tmws.errors import DatabaseError


async def _index_definition(conninfo: str) -> str:
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        row = await (await conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_memory_embedding'")
        ).fetchone()
    assert row is not None
    return str(row[0])


async def test_default_index_is_the_guides_ivfflat(database_url: str) -> None:
    definition = await _index_definition(database_url)
    assert "ivfflat" in definition and "vector_cosine_ops" in definition
    assert "lists='100'" in definition.replace(" ", "")


async def test_hnsw_index_and_dimension_from_settings(fresh_database: str) -> None:
    settings = make_settings(fresh_database, vector_index="hnsw", embedding_dim="64",
                             hnsw_m="8", hnsw_ef_search="20")
    await upgrade(fresh_database, settings)
    definition = await _index_definition(fresh_database)
    assert "hnsw" in definition and "m='8'" in definition.replace(" ", "")
    async with await create_pattern_execution_engine(settings) as engine:
        rows = await engine.database.fetch("SHOW hnsw.ef_search")
        assert rows[0]["hnsw.ef_search"] == "20"
        await engine.memory.store("ns", "hnsw keeps a layered graph of neighbours")
        hits = await engine.memory.similar("ns", "layered neighbour graph")
        assert hits and hits[0].content.startswith("hnsw")


async def test_changed_dimension_is_refused_at_start_up(fresh_database: str) -> None:
    await upgrade(fresh_database, make_settings(fresh_database, embedding_dim="64"))
    with pytest.raises(DatabaseError) as caught:
        await create_pattern_execution_engine(make_settings(fresh_database))
    message = str(caught.value)
    assert "64 dimensions" in message and "384 dimensions" in message
    assert "TMWS_EMBEDDING_DIM" in message


def test_reembed_command_rebuilds_for_a_new_dimension(fresh_database: str) -> None:
    env = {"TMWS_DATABASE_URL": fresh_database, "TMWS_EMBEDDING_DIM": "64",
           "TMWS_DB_MAX_CONNECTIONS": "1"}
    assert run_cli("db", "upgrade", env=env).returncode == 0
    for text in ("alpha release notes", "beta rollout plan", "gamma incident review"):
        assert run_cli("execute", f"remember {text}", env=env).returncode == 0
    env["TMWS_EMBEDDING_DIM"] = "128"
    refused = run_cli("execute", "check health", env=env)
    assert refused.returncode == 2 and "tmws memories reembed" in refused.stderr
    done = run_cli("memories", "reembed", env=env)
    assert done.returncode == 0, done.stderr
    assert "re-embedded 3 memories" in done.stdout and "3/3 (100%)" in done.stderr
    found = run_cli("execute", "find similar rollout plans", env=env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["result"]["memories"][0]["content"] == "beta rollout plan"


async def test_filtered_hnsw_pages_are_full_with_iterative_scans(fresh_database: str) -> None:
    """pgvector < 0.8 stopped after ef_search candidates, before the namespace filter, so a
    namespace owning a tenth of the rows got ~1 of 10 neighbours (the reason for
    TMWS_HNSW_EF_SEARCH=100); with pgvector 0.8's iterative scans the page is full."""
    base = {"vector_index": "hnsw", "embedding_dim": "64", "hnsw_ef_search": "10"}
    await upgrade(fresh_database, make_settings(fresh_database, **base))
    async with await psycopg.AsyncConnection.connect(fresh_database, autocommit=True) as conn:
        # A few hundred rows would be scanned whole: make the planner take the index, as it
        # does at the sizes where this matters.
        row = await (await conn.execute("SELECT current_database()")).fetchone()
        assert row is not None
        for knob in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            await conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET {} = off").format(
                psycopg.sql.Identifier(row[0]), psycopg.sql.Identifier(knob)))
    seeded = False
    for iterative, full in (("false", False), ("true", True)):
        settings = make_settings(fresh_database, vector_iterative_scan=iterative, **base)
        async with await create_pattern_execution_engine(settings) as engine:
            if not seeded:
                for i in range(400):
                    await engine.memory.store(f"tenant-{i % 10}",
                                              f"incident {i} in service {i % 37} at hour {i % 24}")
                await engine.database.fetch("ANALYZE memories")
                seeded = True
            shown = await engine.database.fetch("SHOW hnsw.iterative_scan")
            assert shown[0]["hnsw.iterative_scan"] == ("strict_order" if full else "off")
            pages = [await engine.memory.similar("tenant-3", f"incident in service {n}")
                     for n in range(5)]
            sizes = [len(page) for page in pages]
            if full:
                assert sizes == [10] * 5, sizes
                assert all(m.namespace == "tenant-3" for page in pages for m in page)
            else:
                assert max(sizes) < 10, sizes
