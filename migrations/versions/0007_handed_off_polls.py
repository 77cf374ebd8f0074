"""Handed-off API runs: a fired slot whose API run outlives its dispatch run.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

A dispatch run that has fired all its slots keeps polling their API runs for a few minutes
only, then hands the ones still going to the sensor, which polls each once per tick when
its ``poll_after`` comes, holding no run slot. Without this, one slow graph (a default
timeout of an hour) kept its whole dispatch run, and a place in the run queue, alive.
"""

import sqlalchemy as sa
from alembic import op

from graph_runs.store.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HANDED_OFF = sa.text("poll_after IS NOT NULL")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "poll_after" not in {c["name"] for c in inspector.get_columns("graph_runs")}:
        op.add_column("graph_runs", sa.Column("poll_after", UTCDateTime))
    if "ix_graph_runs_handed_off" not in {i["name"] for i in inspector.get_indexes("graph_runs")}:
        # A new column, empty: the index is built at once, whatever the ledger's size.
        op.create_index(
            "ix_graph_runs_handed_off",
            "graph_runs",
            ["poll_after"],
            sqlite_where=HANDED_OFF,
            postgresql_where=HANDED_OFF,
        )


def downgrade() -> None:
    op.drop_index("ix_graph_runs_handed_off", "graph_runs")
    with op.batch_alter_table("graph_runs") as batch:
        batch.drop_column("poll_after")
