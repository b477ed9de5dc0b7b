"""Memory change log: one row per memory written, updated or deleted, by any statement.

Every tmws process may keep a derived recall index of its own (full text and vectors) beside
PostgreSQL, which stays the source of truth; it is rebuilt at start and must never miss a
write that committed before a query started, whoever made it: another worker or instance,
a bulk import (COPY), a re-embedding (UPDATE memories SET embedding), a delete, an
operator's psql. Triggers on the table, not the code that writes it, are what see all of
them; tmws.database._changes reads the log.

Each row carries the id of the memory (the reader fetches its current state, or learns it is
gone) and the writing transaction's id (xid8, never wraps). Sequence values are taken at
insert but become visible at commit, in another order, so a reader cannot resume after the
last seq it saw; it resumes from the transactions its previous snapshot did not see instead
(tmws_memory_changes_since), which the xid index answers.

The triggers are per statement with transition tables: a COPY of 100,000 rows costs one
INSERT ... SELECT, not 100,000 trigger calls. TRUNCATE (of memories, or of the log itself)
records memory_id -1: "everything changed, reload". The triggers fire ALWAYS, also under
session_replication_role = replica (logical replication, some bulk loaders); only an
explicit ALTER TABLE ... DISABLE TRIGGER escapes them. Readers delete rows older than their
retention window (changed_at, and the xid, bound what may go).

The cost: each writing statement stores its transition table (the rows it wrote, whole) for
the trigger, and the log grows by one small row per memory written until pruned.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TRIGGERS = (
    ("memories_changes_insert", "memories", "INSERT", "REFERENCING NEW TABLE AS new_rows"),
    ("memories_changes_update", "memories", "UPDATE",
     "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    ("memories_changes_delete", "memories", "DELETE", "REFERENCING OLD TABLE AS old_rows"),
    ("memories_changes_truncate", "memories", "TRUNCATE", ""),
    ("memory_changes_truncate", "memory_changes", "TRUNCATE", ""),
)


def upgrade() -> None:
    op.execute("""
        CREATE TABLE memory_changes (
            seq        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
            memory_id  bigint      NOT NULL,
            changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
        )""")
    op.execute("CREATE INDEX idx_memory_changes_xid ON memory_changes (xid)")
    op.execute("CREATE INDEX idx_memory_changes_changed_at ON memory_changes (changed_at)")
    # The trigger functions find the log whatever the writer's search_path. An UPDATE
    # records old ids too: SET id = DEFAULT gives a row a new identity value.
    op.execute("""
        CREATE FUNCTION tmws_memory_changes_insert() RETURNS trigger
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
        BEGIN
            INSERT INTO memory_changes (memory_id) SELECT id FROM new_rows;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE FUNCTION tmws_memory_changes_update() RETURNS trigger
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
        BEGIN
            INSERT INTO memory_changes (memory_id)
                SELECT id FROM new_rows UNION SELECT id FROM old_rows;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE FUNCTION tmws_memory_changes_delete() RETURNS trigger
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
        BEGIN
            INSERT INTO memory_changes (memory_id) SELECT id FROM old_rows;
            RETURN NULL;
        END $$""")
    op.execute("""
        CREATE FUNCTION tmws_memory_changes_truncate() RETURNS trigger
        LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
        BEGIN
            INSERT INTO memory_changes (memory_id) VALUES (-1);
            RETURN NULL;
        END $$""")
    # What a reader has not seen: the changes of transactions its previous snapshot did not
    # see (xid >= its xmax, or in progress then: in its xip), as two ranges of the xid
    # index. A function so that the reader's statement plans once (ROWS 1: a generic plan
    # costs little, so the plan cache keeps it) and so does this query (forced: its generic
    # plan, two index range scans, is the right one, but its estimate of a range with
    # unknown bounds makes the cache re-plan every call instead, a quarter of a millisecond
    # each). STABLE: it reads in the calling statement's snapshot, the one the caller gets
    # from pg_current_snapshot() beside it. The bound below the current xmax only feeds the
    # estimate (rows of transactions the snapshot does not see are invisible anyway).
    op.execute("""
        CREATE FUNCTION tmws_memory_changes_since(since pg_snapshot) RETURNS SETOF bigint
        LANGUAGE plpgsql STABLE STRICT ROWS 1
        SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan AS $$
        BEGIN
            RETURN QUERY
                SELECT c.memory_id FROM memory_changes c
                 WHERE c.xid >= pg_snapshot_xmax(since)
                   AND c.xid < pg_snapshot_xmax(pg_current_snapshot())
                UNION
                SELECT c.memory_id FROM memory_changes c
                 WHERE c.xid >= pg_snapshot_xmin(since) AND c.xid < pg_snapshot_xmax(since)
                   AND c.xid = ANY (ARRAY(SELECT pg_snapshot_xip(since)));
        END $$""")
    for name, table, event, referencing in _TRIGGERS:
        function = f"tmws_memory_changes_{event.lower()}"
        op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} {referencing}"
                   f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}")


def downgrade() -> None:
    for name, table, _event, _referencing in _TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON {table}")
    for event in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP FUNCTION tmws_memory_changes_{event}()")
    op.execute("DROP FUNCTION tmws_memory_changes_since(pg_snapshot)")
    op.execute("DROP TABLE memory_changes")
