"""Call places: the per-account cap on API calls holds across dispatch runs.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

Each dispatch run kept its own count of calls in flight per billing account, so four
parallel runs let one tenant have four times ``GRAPH_RUNS_MAX_CALLS_PER_ACCOUNT`` calls at
the API. A fired slot now takes one of its account's places (``call_place_at``) in the
database before its call, counted over every run, and gives it back when its call ends
(graph_runs/dispatch/call_places.py). ``called_at`` is when its first call began: a slot
that waited for a place submitted that much later, and its timeout runs from then.
"""

import sqlalchemy as sa
from alembic import op

from graph_runs.store.tables import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

HOLDS_PLACE = sa.text("call_place_at IS NOT NULL AND poll_after IS NULL")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = {c["name"] for c in inspector.get_columns("graph_runs")}
    for name in ("call_place_at", "called_at"):
        if name not in present:
            op.add_column("graph_runs", sa.Column(name, UTCDateTime))
    if "ix_graph_runs_call_places" not in {i["name"] for i in inspector.get_indexes("graph_runs")}:
        # A new column, empty: the partial index is built at once, whatever the ledger's size.
        op.create_index(
            "ix_graph_runs_call_places",
            "graph_runs",
            ["billing_account"],
            sqlite_where=HOLDS_PLACE,
            postgresql_where=HOLDS_PLACE,
        )


def downgrade() -> None:
    op.drop_index("ix_graph_runs_call_places", "graph_runs")
    with op.batch_alter_table("graph_runs") as batch:
        batch.drop_column("called_at")
        batch.drop_column("call_place_at")
