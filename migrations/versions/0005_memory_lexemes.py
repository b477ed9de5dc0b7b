"""Stored lexemes: each memory's tsvector kept in a generated column, the full-text index on it.

Recall ranked every full-text match by re-parsing its content with to_tsvector at query
time (~60 µs a row, most of a recall's time). The column is computed once per write, and
the full-text index, idx_memory_content_pattern (same name, same GIN method), indexes it.
Two more lexemes, 'ns <namespace>' and 'vis <visibility>' (a space: no parsed word has
one), let one index scan find only the matches a namespace may read, instead of reading
every match's row to filter it; the namespace filter itself still runs on the rows.

Adding a stored generated column rewrites the table and rebuilds its indexes (the vector
index too) under an exclusive lock: on a large table, raise maintenance_work_mem for the
upgrade (bench/README.md gives the times).

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Dropped first, so the rewrite does not rebuild it by re-parsing every row.
    op.execute("DROP INDEX IF EXISTS idx_memory_content_pattern")
    op.execute("ALTER TABLE memories ADD COLUMN content_tsv tsvector GENERATED ALWAYS AS"
               " (to_tsvector('english', content) || array_to_tsvector("
               "ARRAY['ns ' || namespace, 'vis ' || visibility])) STORED")
    op.execute("CREATE INDEX idx_memory_content_pattern ON memories USING gin (content_tsv)")


def downgrade() -> None:
    op.execute("DROP INDEX idx_memory_content_pattern")
    op.execute("ALTER TABLE memories DROP COLUMN content_tsv")
    op.execute("CREATE INDEX idx_memory_content_pattern ON memories"
               " USING gin (to_tsvector('english', content))")
