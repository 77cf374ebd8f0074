"""Leases judged by one clock: each renewal is a beat, and the sensor times the beats it sees.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

``lease_until`` is written by the dispatch run's clock; the sensor compared it with its own,
so a worker whose clock ran a minute behind looked dead a minute early (and its batch went
to a second run while it fired), and one a minute ahead kept a dead run's slots waiting.
Now each lease renewal counts a beat (``beats``); the sensor notes, by its own clock, when
it first saw the current count (``seen_beats``, ``seen_at``), and a run whose count has not
moved for a lease by that clock has stopped renewing. No two clocks are ever compared.
"""

import sqlalchemy as sa
from alembic import op

from graph_runs.store.tables import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = [
    sa.Column("beats", sa.Integer, nullable=False, server_default="0"),
    sa.Column("seen_beats", sa.Integer),
    sa.Column("seen_at", UTCDateTime),
]


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("dispatch_batches")}
    for column in COLUMNS:
        if column.name not in present:
            op.add_column("dispatch_batches", column)


def downgrade() -> None:
    with op.batch_alter_table("dispatch_batches") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column.name)
