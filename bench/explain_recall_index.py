"""EXPLAIN (ANALYZE, BUFFERS) of the derived recall index's statements at 100,000 memories.

``PYTHONPATH=. .venv/bin/python bench/explain_recall_index.py > bench/explain/recall_index.txt``
(bench/README.md, Memory patterns): the catch-up with nothing new and after one insert and
one delete, the ranked rows fetched by id, and the start-up load.
"""

from __future__ import annotations

import asyncio
import tempfile

import psycopg

from bench._postgres import postgres
from bench.memory_load import Corpus, load
from tmws.config import Settings
from tmws.database import upgrade
from tmws.database._changes import _CATCH_UP, _LOAD
from tmws.memory import _COLUMNS, _READABLE

ROWS = 100_000
FETCH = f"SELECT {_COLUMNS} FROM memories WHERE {_READABLE} AND id = ANY(%(ids)s)"


def explain(conn: psycopg.Connection[tuple[str]], title: str, sql: str,
            params: dict[str, object] | None = None) -> str:
    plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
    return f"-- {title}\n" + "\n".join(row[0] for row in plan)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, postgres(None, tmp) as url:
        asyncio.run(upgrade(url, Settings.from_env({})))
        load(url, Corpus(), ROWS)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE memories")
            row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
            assert row is not None
            params = {"since": row[0], "query": "lineke tisazi"}
            for _ in range(5):  # what a worker's prepared statement has run before
                conn.execute(_CATCH_UP, params, prepare=True)
            out = [explain(conn, "catch-up, nothing changed since the snapshot", _CATCH_UP,
                           params)]
            conn.execute("INSERT INTO memories (namespace, content) VALUES ('agent-1', 'x y z')")
            conn.execute("DELETE FROM memories WHERE id = 5")
            out.append(explain(conn, "catch-up after one insert and one delete", _CATCH_UP,
                               params))
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM memories WHERE namespace = 'agent-1' ORDER BY random() LIMIT 10")]
            out.append(explain(conn, "the ranked rows (10 ids)", FETCH,
                               {"ns": "agent-1", "ids": ids}))
            out.append(explain(conn, "load (start-up), every memory", _LOAD))
    print(f"EXPLAIN (ANALYZE, BUFFERS) of the derived recall index's statements at {ROWS:,}"
          " generated memories\n(bench/explain_recall_index.py; bench/README.md, Memory"
          " patterns)\n")
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
