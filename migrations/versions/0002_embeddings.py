"""Embeddings: a vector column of the configured dimension, its index, and the embedding
configuration the stored vectors were made with; shared or private memories.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from tmws.database._migrate import migration_settings
from tmws.database._vectors import create_index_sql
from tmws.embeddings import provider_identity

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    settings = migration_settings()
    op.execute(f"ALTER TABLE memories ADD COLUMN embedding vector({int(settings.embedding_dim)})")
    op.execute("ALTER TABLE memories ADD COLUMN visibility text NOT NULL DEFAULT 'private'"
               " CHECK (visibility IN ('private', 'shared'))")
    op.execute(create_index_sql(settings))
    op.execute("CREATE INDEX idx_memory_shared_created ON memories (created_at DESC)"
               " WHERE visibility = 'shared'")
    # One row: what produced the stored vectors, checked at every start-up.
    op.execute("""
        CREATE TABLE tmws_embedding_config (
            singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
            provider   text        NOT NULL,
            model      text        NOT NULL,
            dim        integer     NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""")
    provider, model = provider_identity(settings)
    op.execute(sa.text("INSERT INTO tmws_embedding_config (provider, model, dim)"
                       " VALUES (:provider, :model, :dim)")
               .bindparams(provider=provider, model=model, dim=settings.embedding_dim))


def downgrade() -> None:
    op.execute("DROP TABLE tmws_embedding_config")
    op.execute("DROP INDEX idx_memory_shared_created")
    op.execute("ALTER TABLE memories DROP COLUMN visibility")
    op.execute("ALTER TABLE memories DROP COLUMN embedding")
