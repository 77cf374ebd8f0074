"""Indexes for operations: the ledger by creation time, and by Dagster run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

``graph-runs status`` and the asset checks read the last hour's and the last day's rows;
``graph-runs reconcile`` looks rows up by the Dagster run that ran them. Without these,
each read the whole ledger.
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
    present = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("graph_runs")}
    for name, columns in INDEXES.items():
        if name not in present:
            op.create_index(name, "graph_runs", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, "graph_runs")
