"""New ledger rows, built in one place for every way a run comes about.

Scheduled slots (fired, missed, skipped), trigger-now and backfill runs all get their row
here, so that the request body, which is a pure function of the row, is the same for all.
"""

import datetime as dt
from typing import Any

from graph_runs.core.cron import format_utc
from graph_runs.core.ids import new_id
from graph_runs.core.statuses import NEVER_RAN


def slot_key(schedule_id: str, scheduled_for: dt.datetime) -> str:
    """The idempotency key (and Dagster run key) of a scheduled slot."""
    return f"sched:{schedule_id}:{format_utc(scheduled_for)}"


def manual_key(schedule_id: str, request_key: str) -> str:
    """The idempotency key of a trigger-now run of a schedule."""
    return f"manual:{schedule_id}:{request_key}"


def schedule_run_row(
    schedule: Any,
    *,
    idempotency_key: str,
    scheduled_for: dt.datetime | None,
    status: str,
    now: dt.datetime,
    billing_account: str | None,
    trigger_kind: str = "scheduled",
    trigger_source: str = "graph_schedules_sensor",
    requested_by: str | None = None,
    reason: str | None = None,
    due_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """A ledger row for a run of ``schedule`` (a schedules row), in ``status``.

    ``due_at`` is when it fires (the slot plus jitter); a run asked for now fires at ``now``.

    A row that never runs (missed, skipped, cancelled) is final at once: it carries its
    status as the error code and the reason as the message, so that ``describe`` says why
    each slot did not run.
    """
    final = status in NEVER_RAN
    return {
        "id": new_id("run"),
        "idempotency_key": idempotency_key,
        "schedule_id": schedule.id,
        "scheduled_for": scheduled_for,
        "graph_id": schedule.graph_id,
        "owner": schedule.owner,
        "grant_id": schedule.grant_id,
        "billing_account": billing_account,
        "input": schedule.input or {},
        "max_cost_micros": schedule.max_cost_micros,
        "timeout_seconds": schedule.timeout_seconds,
        "trigger_kind": trigger_kind,
        "trigger_source": trigger_source,
        "trigger_ref": schedule.id,
        "requested_by": requested_by,
        "status": status,
        "created_at": now,
        "due_at": now if due_at is None else due_at,
        "error_code": status if final else None,
        "error_message": reason if final else None,
        "finished_at": now if final else None,
    }


def slot_row(
    schedule: Any,
    slot: dt.datetime,
    status: str,
    *,
    now: dt.datetime,
    billing_account: str | None,
    reason: str | None,
    due_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """The ledger row of one of ``schedule``'s scheduled slots, keyed ``sched:{id}:{slot}``."""
    return schedule_run_row(
        schedule,
        idempotency_key=slot_key(schedule.id, slot),
        scheduled_for=slot,
        status=status,
        now=now,
        billing_account=billing_account,
        reason=reason,
        due_at=slot if due_at is None else due_at,
    )


def slot_label(row: Any) -> str:
    """How a ledger row's slot reads: its instant, or its trigger kind for a run of none."""
    return format_utc(row.scheduled_for) if row.scheduled_for else row.trigger_kind
