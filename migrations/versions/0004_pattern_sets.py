"""Pattern sets shared by every instance: each change is a new numbered version of the
whole set, written under a lock, so no acknowledged change is lost and every worker
converges on the newest; and the version each live instance runs.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # grp: TMWS_PATTERN_SYNC_GROUP (instances sharing one set). base: the fingerprint of the
    # pattern file this line of versions started from: an instance whose file differs
    # starts a new line, one whose file matches adopts the newest version.
    op.execute("""
        CREATE TABLE pattern_sets (
            grp         text        NOT NULL,
            version     bigint      NOT NULL,
            fingerprint text        NOT NULL,
            base        text        NOT NULL,
            patterns    jsonb       NOT NULL,
            action      text        NOT NULL,
            actor       text        NOT NULL,
            target      text,
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (grp, version)
        )""")
    op.execute("""
        CREATE TABLE pattern_instances (
            instance    text        PRIMARY KEY,
            grp         text        NOT NULL,
            version     bigint      NOT NULL,
            fingerprint text        NOT NULL,
            seen_at     timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("CREATE INDEX idx_pattern_instances_grp ON pattern_instances (grp, seen_at)")


def downgrade() -> None:
    op.execute("DROP TABLE pattern_instances")
    op.execute("DROP TABLE pattern_sets")
