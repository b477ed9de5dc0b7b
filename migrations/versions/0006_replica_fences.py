"""Read-your-writes fences for read replicas: per namespace (and one scope for shared
memories), the primary's WAL position just after its latest committed memory write.

A worker choosing where to run a namespace's read looks the fence up on the primary and
sends the read to a replica only once the replica has replayed past it, so a memory
acknowledged by any worker of any instance is never missed by a read from another
(tmws.database._replicas). Written only when TMWS_DATABASE_REPLICA_URLS is set; one small
row per namespace that ever wrote.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE replica_fences (
            scope text   PRIMARY KEY,
            lsn   pg_lsn NOT NULL
        )""")


def downgrade() -> None:
    op.execute("DROP TABLE replica_fences")
