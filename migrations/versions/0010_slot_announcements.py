"""Slot announcements: every outcome becomes an event on its schedule's partition.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

The dispatch op logged a slot's event as it recorded it, which cost a 1,000-slot burst 39%
of its rate (docs/benchmarks.md) and left out every outcome the op did not record: slots
skipped, missed or cancelled before they fired, lost, or polled to their end by the
sensor. Now each move of a ledger row into an outcome sets ``announce_tick`` to 0, and the
slot events sensor announces those rows, marking them with its tick until the next tick
clears them (graph_runs/jobs/slot_events.py).

Rows written before this revision keep NULL: their outcomes are history, not news, and a
first tick that announced a whole ledger would stall the daemon.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TO_ANNOUNCE = sa.text("announce_tick IS NOT NULL")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "announce_tick" not in {c["name"] for c in inspector.get_columns("graph_runs")}:
        op.add_column("graph_runs", sa.Column("announce_tick", sa.BigInteger))
    if "ix_graph_runs_to_announce" not in {i["name"] for i in inspector.get_indexes("graph_runs")}:
        # A new column, all NULL: the build reads the ledger once and keeps no row of it.
        op.create_index(
            "ix_graph_runs_to_announce",
            "graph_runs",
            ["announce_tick"],
            sqlite_where=TO_ANNOUNCE,
            postgresql_where=TO_ANNOUNCE,
        )


def downgrade() -> None:
    op.drop_index("ix_graph_runs_to_announce", "graph_runs")
    with op.batch_alter_table("graph_runs") as batch:
        batch.drop_column("announce_tick")
