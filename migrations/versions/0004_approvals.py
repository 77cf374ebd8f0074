"""Human approval gate, webhook deliveries, and the ledger's over-budget flag.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

New schedule and ledger columns have server defaults, so rows written before this revision
(or by another application that does not know them) keep their old behaviour: no approval
needed, not over budget.
"""

import sqlalchemy as sa
from alembic import op

from graph_runs.store.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PENDING_APPROVAL = sa.text("status = 'pending'")
APPROVED_APPROVAL = sa.text("status = 'approved' AND launched_at IS NULL")

SCHEDULE_COLUMNS = [
    sa.Column("requires_approval", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("approval_timeout_seconds", sa.Integer, nullable=False, server_default="86400"),
    sa.Column("on_approval_timeout", sa.String(20), nullable=False, server_default="skip"),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = {c["name"] for c in inspector.get_columns("schedules")}
    for column in SCHEDULE_COLUMNS:
        if column.name not in present:
            op.add_column("schedules", column)
    if "over_budget" not in {c["name"] for c in inspector.get_columns("graph_runs")}:
        op.add_column(
            "graph_runs",
            sa.Column("over_budget", sa.Boolean, nullable=False, server_default=sa.false()),
        )
    tables = set(inspector.get_table_names())
    if "approvals" not in tables:
        op.create_table(
            "approvals",
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("graph_run_id", sa.String(40), nullable=False),
            sa.Column("schedule_id", sa.String(40), nullable=False),
            sa.Column("scheduled_for", UTCDateTime, nullable=False),
            sa.Column("graph_id", sa.String(200), nullable=False),
            sa.Column("input", sa.JSON, nullable=False),
            sa.Column("grant_id", sa.String(40), nullable=False),
            sa.Column("owner", sa.String(200), nullable=False),
            sa.Column("billing_account", sa.String(200)),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("on_timeout", sa.String(20), nullable=False),
            sa.Column("created_at", UTCDateTime, nullable=False),
            sa.Column("expires_at", UTCDateTime, nullable=False),
            sa.Column("decided_by", sa.String(200)),
            sa.Column("decided_at", UTCDateTime),
            sa.Column("decision_note", sa.Text),
            sa.Column("launched_at", UTCDateTime),
            sa.Column("dagster_run_id", sa.String(64)),
            sa.UniqueConstraint("graph_run_id", name="uq_approvals_graph_run"),
            sa.Index(
                "ix_approvals_pending_expiry",
                "expires_at",
                sqlite_where=PENDING_APPROVAL,
                postgresql_where=PENDING_APPROVAL,
            ),
            sa.Index(
                "ix_approvals_to_launch",
                "decided_at",
                sqlite_where=APPROVED_APPROVAL,
                postgresql_where=APPROVED_APPROVAL,
            ),
            sa.Index("ix_approvals_status_created", "status", "created_at"),
        )
    if "webhook_deliveries" not in tables:
        op.create_table(
            "webhook_deliveries",
            sa.Column("id", sa.String(200), primary_key=True),
            sa.Column("received_at", UTCDateTime, nullable=False),
            sa.Column("approval_id", sa.String(40), nullable=False),
            sa.Column("decision", sa.String(20), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("approvals")
    # Batch mode, because SQLite drops a column by copying the table.
    with op.batch_alter_table("graph_runs") as batch:
        batch.drop_column("over_budget")
    with op.batch_alter_table("schedules") as batch:
        for column in reversed(SCHEDULE_COLUMNS):
            batch.drop_column(column.name)
