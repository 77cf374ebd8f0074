"""Scheduling policies: overlap, catch-up, jitter, bounds, external ids, in-flight index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Every new column is nullable or has a server default, so the upgrade is an ADD COLUMN on
both backends and rows written before it keep working with the documented defaults.
"""

import sqlalchemy as sa
from alembic import op

from graph_runs.store.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LIVE_EXTERNAL_ID = sa.text("external_id IS NOT NULL AND status <> 'deleted'")
IN_FLIGHT_RUN = sa.text("status IN ('pending', 'buffered', 'queued', 'running', 'cancelling')")

SCHEDULE_COLUMNS = [
    sa.Column("external_id", sa.String(200)),
    sa.Column("overlap", sa.String(20), nullable=False, server_default="skip"),
    sa.Column("catchup", sa.String(20), nullable=False, server_default="latest"),
    sa.Column("catchup_window_seconds", sa.Integer, nullable=False, server_default="3600"),
    sa.Column("jitter_seconds", sa.Integer, nullable=False, server_default="0"),
    sa.Column("start_at", UTCDateTime),
    sa.Column("end_at", UTCDateTime),
    sa.Column("max_runs", sa.Integer),
    sa.Column("pause_after_failures", sa.Integer, nullable=False, server_default="3"),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("paused_by", sa.String(200)),
    sa.Column("slot_cursor", UTCDateTime),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = {c["name"] for c in inspector.get_columns("schedules")}
    for column in SCHEDULE_COLUMNS:
        if column.name not in present:
            op.add_column("schedules", column)
    if "uq_schedules_owner_external_id" not in {
        i["name"] for i in inspector.get_indexes("schedules")
    }:
        op.create_index(
            "uq_schedules_owner_external_id",
            "schedules",
            ["owner", "external_id"],
            unique=True,
            sqlite_where=LIVE_EXTERNAL_ID,
            postgresql_where=LIVE_EXTERNAL_ID,
        )
    if "ix_graph_runs_in_flight" not in {i["name"] for i in inspector.get_indexes("graph_runs")}:
        op.create_index(
            "ix_graph_runs_in_flight",
            "graph_runs",
            ["schedule_id"],
            sqlite_where=IN_FLIGHT_RUN,
            postgresql_where=IN_FLIGHT_RUN,
        )


def downgrade() -> None:
    op.drop_index("ix_graph_runs_in_flight", table_name="graph_runs")
    op.drop_index("uq_schedules_owner_external_id", table_name="schedules")
    with op.batch_alter_table("schedules") as batch:
        for column in reversed(SCHEDULE_COLUMNS):
            batch.drop_column(column.name)
