"""Initial schema: grants, schedules, the run ledger, charge receipts and the audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

from graph_runs.store.tables import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ACTIVE_SCHEDULE = sa.text("enabled AND status = 'active'")
PENDING_RUN = sa.text("status = 'pending'")


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "execution_grants" not in existing:
        op.create_table(
            "execution_grants",
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("owner", sa.String(200), nullable=False),
            sa.Column("billing_account", sa.String(200), nullable=False),
            sa.Column("scopes", sa.JSON, nullable=False),
            sa.Column("connection_ids", sa.JSON, nullable=False),
            sa.Column("created_at", UTCDateTime, nullable=False),
            sa.Column("expires_at", UTCDateTime),
            sa.Column("revoked_at", UTCDateTime),
            sa.Column("revoked_by", sa.String(200)),
        )
        op.create_index("ix_execution_grants_owner", "execution_grants", ["owner"])
    if "schedules" not in existing:
        op.create_table(
            "schedules",
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("owner", sa.String(200), nullable=False),
            sa.Column("graph_id", sa.String(200), nullable=False),
            sa.Column("input", sa.JSON, nullable=False),
            sa.Column("cron", sa.String(200)),
            sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
            sa.Column("run_at", UTCDateTime),
            sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
            sa.Column("status", sa.String(20), nullable=False, server_default="active"),
            sa.Column("grant_id", sa.String(40), nullable=False),
            sa.Column("max_cost_micros", sa.BigInteger),
            sa.Column("timeout_seconds", sa.Integer),
            sa.Column("next_run_at", UTCDateTime),
            sa.Column("last_run_at", UTCDateTime),
            sa.Column("runs_total", sa.Integer, nullable=False, server_default="0"),
            sa.Column("runs_succeeded", sa.Integer, nullable=False, server_default="0"),
            sa.Column("runs_failed", sa.Integer, nullable=False, server_default="0"),
            sa.Column("last_error", sa.Text),
            sa.Column("pause_note", sa.Text),
            sa.Column("paused_at", UTCDateTime),
            sa.Column(
                "created_at",
                UTCDateTime,
                nullable=False,
                server_default=sa.func.current_timestamp(),
            ),
            sa.Column(
                "updated_at",
                UTCDateTime,
                nullable=False,
                server_default=sa.func.current_timestamp(),
            ),
            sa.Column("deleted_at", UTCDateTime),
        )
        op.create_index(
            "ix_schedules_due",
            "schedules",
            ["next_run_at"],
            sqlite_where=ACTIVE_SCHEDULE,
            postgresql_where=ACTIVE_SCHEDULE,
        )
        op.create_index("ix_schedules_owner", "schedules", ["owner"])
        op.create_index("ix_schedules_updated_at", "schedules", ["updated_at"])
    if "graph_runs" not in existing:
        op.create_table(
            "graph_runs",
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("idempotency_key", sa.String(300), nullable=False),
            sa.Column("schedule_id", sa.String(40)),
            sa.Column("scheduled_for", UTCDateTime),
            sa.Column("graph_id", sa.String(200), nullable=False),
            sa.Column("owner", sa.String(200), nullable=False),
            sa.Column("grant_id", sa.String(40), nullable=False),
            sa.Column("billing_account", sa.String(200)),
            sa.Column("input", sa.JSON, nullable=False),
            sa.Column("max_cost_micros", sa.BigInteger),
            sa.Column("timeout_seconds", sa.Integer),
            sa.Column("trigger_kind", sa.String(20), nullable=False),
            sa.Column("trigger_source", sa.String(100), nullable=False),
            sa.Column("trigger_ref", sa.String(300)),
            sa.Column("requested_by", sa.String(200)),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("dagster_run_id", sa.String(64)),
            sa.Column("api_run_id", sa.String(200)),
            sa.Column("error_code", sa.String(100)),
            sa.Column("error_message", sa.Text),
            sa.Column("output", sa.JSON),
            sa.Column("created_at", UTCDateTime, nullable=False),
            sa.Column("started_at", UTCDateTime),
            sa.Column("finished_at", UTCDateTime),
            sa.UniqueConstraint("idempotency_key", name="uq_graph_runs_idempotency_key"),
            sa.UniqueConstraint("schedule_id", "scheduled_for", name="uq_graph_runs_schedule_slot"),
        )
        op.create_index(
            "ix_graph_runs_pending",
            "graph_runs",
            ["created_at"],
            sqlite_where=PENDING_RUN,
            postgresql_where=PENDING_RUN,
        )
        op.create_index(
            "ix_graph_runs_schedule_created", "graph_runs", ["schedule_id", "created_at"]
        )
    if "charge_receipts" not in existing:
        op.create_table(
            "charge_receipts",
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("graph_run_id", sa.String(40), nullable=False),
            sa.Column("api_run_id", sa.String(200), nullable=False),
            sa.Column("billing_account", sa.String(200), nullable=False),
            sa.Column("grant_id", sa.String(40), nullable=False),
            sa.Column("schedule_id", sa.String(40)),
            sa.Column("dagster_run_id", sa.String(64)),
            sa.Column("graph_id", sa.String(200), nullable=False),
            sa.Column("model", sa.String(200)),
            sa.Column("prompt_tokens", sa.Integer, nullable=False),
            sa.Column("completion_tokens", sa.Integer, nullable=False),
            sa.Column("total_tokens", sa.Integer, nullable=False),
            sa.Column("cost_micros", sa.BigInteger, nullable=False),
            sa.Column("created_at", UTCDateTime, nullable=False),
            sa.UniqueConstraint("graph_run_id", name="uq_charge_receipts_graph_run"),
            sa.UniqueConstraint("api_run_id", name="uq_charge_receipts_api_run"),
        )
        op.create_index(
            "ix_charge_receipts_account_created",
            "charge_receipts",
            ["billing_account", "created_at"],
        )
    if "audit_log" not in existing:
        op.create_table(
            "audit_log",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", UTCDateTime, nullable=False),
            sa.Column("actor", sa.String(200), nullable=False),
            sa.Column("action", sa.String(100), nullable=False),
            sa.Column("entity_type", sa.String(50), nullable=False),
            sa.Column("entity_id", sa.String(40), nullable=False),
            sa.Column("detail", sa.JSON, nullable=False),
        )
        op.create_index("ix_audit_log_entity", "audit_log", ["entity_type", "entity_id"])


def downgrade() -> None:
    for table in ("audit_log", "charge_receipts", "graph_runs", "schedules", "execution_grants"):
        op.drop_table(table)
