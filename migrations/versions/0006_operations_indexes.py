"""Indexes for operations: the ledger by creation time, and by Dagster run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

``graph-runs status`` and the asset checks read the last hour's and the last day's rows;
``graph-runs reconcile`` looks rows up by the Dagster run that ran them. Without these,
each read the whole ledger.

On PostgreSQL the indexes are built ``CONCURRENTLY``, outside the migration's transaction:
a plain ``CREATE INDEX`` holds a lock that blocks every ledger write for as long as the
build takes, which on a ledger of millions of rows is minutes of slots that cannot record
their outcome. A concurrent build that failed leaves an INVALID index behind; it is
dropped and built again, so running ``graph-runs db upgrade`` again is the fix.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_graph_runs_created": ["created_at"],
    "ix_graph_runs_dagster_run": ["dagster_run_id"],
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        present = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("graph_runs")}
        for name, columns in INDEXES.items():
            if name not in present:
                op.create_index(name, "graph_runs", columns)
        return
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        for name, columns in INDEXES.items():
            valid = bind.execute(
                sa.text(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = :name"
                ),
                {"name": name},
            ).scalar()
            if valid:
                continue
            if valid is not None:
                op.drop_index(name, "graph_runs", postgresql_concurrently=True)
            op.create_index(name, "graph_runs", columns, postgresql_concurrently=True)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, "graph_runs")
