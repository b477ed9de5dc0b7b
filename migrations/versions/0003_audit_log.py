"""Audit log: one row per execution and per pattern or memory change (who, what, outcome,
when, tokens), written in batches by tmws.audit.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # detail holds small facts only (pattern type, cache hit, mode): never query text,
    # memory content or secrets.
    op.execute("""
        CREATE TABLE audit_log (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            occurred_at timestamptz NOT NULL DEFAULT now(),
            request_id  text,
            actor       text        NOT NULL,
            action      text        NOT NULL,
            target      text,
            outcome     text        NOT NULL,
            tokens      integer     NOT NULL DEFAULT 0,
            duration_ms real,
            detail      jsonb
        )""")
    # Rows arrive in time order, so a BRIN index answers time windows (and pruning) for a
    # fraction of a B-tree's cost per insert; one B-tree serves "what did this actor do".
    # No index on request_id: it cost 3-6 us of server CPU per row on every execution
    # (bench/README.md), and "what did this request do" is rare enough to filter by time.
    op.execute("CREATE INDEX idx_audit_occurred ON audit_log USING brin (occurred_at)")
    op.execute("CREATE INDEX idx_audit_actor_occurred ON audit_log (actor, occurred_at DESC)")


def downgrade() -> None:
    op.execute("DROP TABLE audit_log")
