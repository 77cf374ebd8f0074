"""The schedules database, as SQLAlchemy Core tables.

The migrations in ``migrations/versions`` create exactly these tables; a test compares the
two. Money is stored in integer micro-dollars (``*_micros``) so that sums are exact in
SQLite and Postgres alike. Times are stored in UTC.
"""

import datetime as dt
from typing import Any

import sqlalchemy as sa

UTC = dt.UTC


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite keeps no offset, so values are stored there as naive UTC and given their zone back
    on the way out; Postgres gets ``timestamp with time zone``.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        """Refuse naive times: a naive time's zone is a guess, and guesses shift slots."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given where an aware UTC time is needed")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> Any:
        """Give SQLite's naive values their UTC zone back."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

ACTIVE_SCHEDULE = sa.text("enabled AND status = 'active'")
LIVE_EXTERNAL_ID = sa.text("external_id IS NOT NULL AND status <> 'deleted'")
# Ledger rows whose run may still start or is going: what the overlap policy looks at.
IN_FLIGHT_RUN = sa.text("status IN ('pending', 'buffered', 'queued', 'running', 'cancelling')")
UNBATCHED_PENDING = sa.text("status = 'pending' AND batch_id IS NULL")
OPEN_BATCH = sa.text("status = 'open'")
HANDED_OFF = sa.text("poll_after IS NOT NULL")
HOLDS_CALL_PLACE = sa.text("call_place_at IS NOT NULL AND poll_after IS NULL")
TO_ANNOUNCE = sa.text("announce_tick IS NOT NULL")

execution_grants = sa.Table(
    "execution_grants",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("billing_account", sa.String(200), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("connection_ids", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime),
    sa.Column("revoked_at", UTCDateTime),
    sa.Column("revoked_by", sa.String(200)),
    sa.Index("ix_execution_grants_owner", "owner"),
)

schedules = sa.Table(
    "schedules",
    metadata,
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
        "created_at", UTCDateTime, nullable=False, server_default=sa.func.current_timestamp()
    ),
    sa.Column(
        "updated_at", UTCDateTime, nullable=False, server_default=sa.func.current_timestamp()
    ),
    sa.Column("deleted_at", UTCDateTime),
    # Added by 0002: policies, bounds and the app's own id (see graph_runs/core/policies.py).
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
    # Slots at or before this instant have been written to the ledger (or were skipped on
    # purpose: paused, or before a cron change). NULL for rows another application wrote.
    sa.Column("slot_cursor", UTCDateTime),
    # Added by 0004: the human approval gate (see graph_runs/approvals/).
    sa.Column("requires_approval", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("approval_timeout_seconds", sa.Integer, nullable=False, server_default="86400"),
    sa.Column("on_approval_timeout", sa.String(20), nullable=False, server_default="skip"),
    # The sensor's due query reads this partial index only: O(due), not O(all schedules).
    sa.Index(
        "ix_schedules_due",
        "next_run_at",
        sqlite_where=ACTIVE_SCHEDULE,
        postgresql_where=ACTIVE_SCHEDULE,
    ),
    sa.Index("ix_schedules_owner", "owner"),
    # Added by 0011: GET /v1/schedules pages by (created_at, id), by owner or not.
    sa.Index("ix_schedules_created_id", "created_at", "id"),
    sa.Index("ix_schedules_owner_created_id", "owner", "created_at", "id"),
    # Lets the sensor find schedules created or deleted since its last tick (partitions).
    sa.Index("ix_schedules_updated_at", "updated_at"),
    # An application's id for a schedule is unique per owner among schedules not deleted.
    sa.Index(
        "uq_schedules_owner_external_id",
        "owner",
        "external_id",
        unique=True,
        sqlite_where=LIVE_EXTERNAL_ID,
        postgresql_where=LIVE_EXTERNAL_ID,
    ),
)

run_ledger = sa.Table(
    "graph_runs",
    metadata,
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
    # Added by 0004: the reported cost was above the run's max_cost_usd.
    sa.Column("over_budget", sa.Boolean, nullable=False, server_default=sa.false()),
    # Added by 0005: when the slot fires (slot plus jitter), the dispatch batch that fires
    # it, and how many dispatch runs have tried (see graph_runs/dispatch/batches.py).
    sa.Column("due_at", UTCDateTime),
    sa.Column("batch_id", sa.String(40)),
    sa.Column("dispatch_attempts", sa.Integer, nullable=False, server_default="0"),
    # Added by 0007: set while the slot's API run, handed off by the dispatch run that fired
    # it, waits for the sensor's next poll (graph_runs/dispatch/polling.py).
    sa.Column("poll_after", UTCDateTime),
    # Added by 0009: set while the fired slot's call holds one of its billing account's
    # call places (graph_runs/dispatch/call_places.py), and when its first call began.
    sa.Column("call_place_at", UTCDateTime),
    sa.Column("called_at", UTCDateTime),
    # Added by 0010: 0 once the row reaches an outcome not yet announced as an event on its
    # schedule's partition, then the slot events sensor's tick that announced it, until the
    # next tick clears it (graph_runs/jobs/slot_events.py); NULL otherwise.
    sa.Column("announce_tick", sa.BigInteger),
    sa.UniqueConstraint("idempotency_key", name="uq_graph_runs_idempotency_key"),
    sa.UniqueConstraint("schedule_id", "scheduled_for", name="uq_graph_runs_schedule_slot"),
    # Rows the sensor claimed but Dagster may not have made a run for yet: a handful at most.
    sa.Index(
        "ix_graph_runs_pending",
        "created_at",
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    ),
    sa.Index("ix_graph_runs_schedule_created", "schedule_id", "created_at"),
    # The overlap check and the sensor's reconciliation with Dagster read only these rows.
    sa.Index(
        "ix_graph_runs_in_flight",
        "schedule_id",
        sqlite_where=IN_FLIGHT_RUN,
        postgresql_where=IN_FLIGHT_RUN,
    ),
    sa.Index("ix_graph_runs_batch", "batch_id"),
    # Outcomes to announce and the last tick's announcements: a tick's worth at most.
    sa.Index(
        "ix_graph_runs_to_announce",
        "announce_tick",
        sqlite_where=TO_ANNOUNCE,
        postgresql_where=TO_ANNOUNCE,
    ),
    # `graph-runs status` and the asset checks read the last hour and day; reconcile looks
    # rows up by their Dagster run.
    sa.Index("ix_graph_runs_created", "created_at"),
    sa.Index("ix_graph_runs_dagster_run", "dagster_run_id"),
    sa.Index(
        "ix_graph_runs_handed_off",
        "poll_after",
        sqlite_where=HANDED_OFF,
        postgresql_where=HANDED_OFF,
    ),
    # Counting an account's call places reads only the slots holding one.
    sa.Index(
        "ix_graph_runs_call_places",
        "billing_account",
        sqlite_where=HOLDS_CALL_PLACE,
        postgresql_where=HOLDS_CALL_PLACE,
    ),
    # The sensor batches claimed slots by reading only these rows.
    sa.Index(
        "ix_graph_runs_unbatched",
        "due_at",
        sqlite_where=UNBATCHED_PENDING,
        postgresql_where=UNBATCHED_PENDING,
    ),
)

# Added by 0005: one Dagster run's worth of slots, and the lease its run holds on them.
dispatch_batches = sa.Table(
    "dispatch_batches",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),  # open, done
    # Which dispatch run may work the batch: run key batch:{id}:{attempt}. A run whose
    # attempt is no longer the batch's has been replaced and may not renew the lease.
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    # The schedule, for a batch of one scheduled slot: its run keeps the schedule partition.
    sa.Column("partition_key", sa.String(40)),
    sa.Column("dagster_run_id", sa.String(64)),
    sa.Column("lease_until", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    # Added by 0008: lease renewals counted by the run, and when the sensor (by its own
    # clock) first saw the current count: a lease is judged on one clock only.
    sa.Column("beats", sa.Integer, nullable=False, server_default="0"),
    sa.Column("seen_beats", sa.Integer),
    sa.Column("seen_at", UTCDateTime),
    sa.Index(
        "ix_dispatch_batches_open",
        "due_at",
        sqlite_where=OPEN_BATCH,
        postgresql_where=OPEN_BATCH,
    ),
)

charge_receipts = sa.Table(
    "charge_receipts",
    metadata,
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
    # One receipt per graph run and per API run: no retry or re-execution bills twice.
    sa.UniqueConstraint("graph_run_id", name="uq_charge_receipts_graph_run"),
    sa.UniqueConstraint("api_run_id", name="uq_charge_receipts_api_run"),
    sa.Index("ix_charge_receipts_account_created", "billing_account", "created_at"),
)

# Added by 0003: a spending limit per billing account and period (only "month" for now).
budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("billing_account", sa.String(200), primary_key=True),
    sa.Column("period", sa.String(20), primary_key=True),
    sa.Column("limit_micros", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)

PENDING_APPROVAL = sa.text("status = 'pending'")
APPROVED_APPROVAL = sa.text("status = 'approved' AND launched_at IS NULL")

# Added by 0004: one row per slot of a schedule that needs a human's approval before it runs.
approvals = sa.Table(
    "approvals",
    metadata,
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
    # The approvals sensor reads only these two partial indexes: its cost follows the
    # approvals timing out or waiting to launch, not how many were ever decided.
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

# Added by 0004: webhook delivery ids already acted on, so that a replay is refused.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("approval_id", sa.String(40), nullable=False),
    sa.Column("decision", sa.String(20), nullable=False),
)

# Added by 0011: keys of the management API (graph_runs/access/api_keys.py); the secret is
# kept as its SHA-256 only.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    # NULL: the key acts for the app and may name any owner.
    sa.Column("owner", sa.String(200)),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("revoked_at", UTCDateTime),
    sa.Column("revoked_by", sa.String(200)),
)

# Added by 0011: the first answer to each POST with an Idempotency-Key, per API key
# (graph_runs/api/idempotency.py).
api_idempotency = sa.Table(
    "api_idempotency",
    metadata,
    sa.Column("api_key_id", sa.String(40), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Index("ix_api_idempotency_expires", "expires_at"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("entity_type", sa.String(50), nullable=False),
    sa.Column("entity_id", sa.String(40), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Index("ix_audit_log_entity", "entity_type", "entity_id"),
)


def audit(
    conn: sa.Connection,
    *,
    at: dt.datetime,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one audit entry in the caller's transaction."""
    conn.execute(
        audit_log.insert().values(
            at=at,
            actor=actor,
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            detail=detail or {},
        )
    )
