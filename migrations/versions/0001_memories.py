"""Memories: what agents store and recall, one namespace (agent or team) per row.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("""
        CREATE TABLE memories (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            namespace   text        NOT NULL,
            content     text        NOT NULL CHECK (length(content) > 0),
            memory_type text        NOT NULL DEFAULT 'general',
            importance  real        NOT NULL DEFAULT 0.5
                                    CHECK (importance >= 0 AND importance <= 1),
            tags        text[]      NOT NULL DEFAULT '{}',
            metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        )""")
    # The indexes tmws verify checks (the vector index arrives with the embedding column).
    op.execute("CREATE INDEX idx_memory_content_pattern ON memories"
               " USING gin (to_tsvector('english', content))")
    op.execute("CREATE INDEX idx_memory_importance_created ON memories"
               " (importance DESC, created_at DESC)")
    op.execute("CREATE INDEX idx_memory_tags ON memories USING gin (tags)")
    # Every read is scoped to one namespace.
    op.execute("CREATE INDEX idx_memory_namespace_created ON memories"
               " (namespace, created_at DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE memories")
