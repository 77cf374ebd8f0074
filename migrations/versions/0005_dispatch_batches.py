"""Dispatch batches: slots fired many to a Dagster run, with a lease in the database.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

Ledger rows written before this revision have no batch and no due instant; the sensor
batches any that are still pending, and fires them at once.
"""

import sqlalchemy as sa
from alembic import op

from graph_runs.store.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OPEN_BATCH = sa.text("status = 'open'")
UNBATCHED_PENDING = sa.text("status = 'pending' AND batch_id IS NULL")

LEDGER_COLUMNS = [
    sa.Column("due_at", UTCDateTime),
    sa.Column("batch_id", sa.String(40)),
    sa.Column("dispatch_attempts", sa.Integer, nullable=False, server_default="0"),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = {c["name"] for c in inspector.get_columns("graph_runs")}
    for column in LEDGER_COLUMNS:
        if column.name not in present:
            op.add_column("graph_runs", column)
    indexes = {i["name"] for i in inspector.get_indexes("graph_runs")}
    if "ix_graph_runs_batch" not in indexes:
        op.create_index("ix_graph_runs_batch", "graph_runs", ["batch_id"])
    if "ix_graph_runs_unbatched" not in indexes:
        op.create_index(
            "ix_graph_runs_unbatched",
            "graph_runs",
            ["due_at"],
            sqlite_where=UNBATCHED_PENDING,
            postgresql_where=UNBATCHED_PENDING,
        )
    if "dispatch_batches" not in set(inspector.get_table_names()):
        op.create_table(
            "dispatch_batches",
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("attempt", sa.Integer, nullable=False),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("due_at", UTCDateTime, nullable=False),
            sa.Column("partition_key", sa.String(40)),
            sa.Column("dagster_run_id", sa.String(64)),
            sa.Column("lease_until", UTCDateTime),
            sa.Column("created_at", UTCDateTime, nullable=False),
            sa.Column("updated_at", UTCDateTime, nullable=False),
            sa.Column("finished_at", UTCDateTime),
            sa.Index(
                "ix_dispatch_batches_open",
                "due_at",
                sqlite_where=OPEN_BATCH,
                postgresql_where=OPEN_BATCH,
            ),
        )


def downgrade() -> None:
    op.drop_table("dispatch_batches")
    op.drop_index("ix_graph_runs_unbatched", "graph_runs")
    op.drop_index("ix_graph_runs_batch", "graph_runs")
    with op.batch_alter_table("graph_runs") as batch:
        for column in reversed(LEDGER_COLUMNS):
            batch.drop_column(column.name)
