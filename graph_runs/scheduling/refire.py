"""Refire: a person asks for a schedule's failed slots in a range to be fired again.

This is the only way a failed slot fires again. Re-executing the Dagster run that fired
it does not: that run may have fired other owners' slots, and a failure is an outcome
that the run recorded (issue 22).

A refired slot keeps its ledger row, its idempotency key and its request body, so the
execution API sees the same request again:
- a slot the API never accepted (a grant, scope or budget refusal, the API unreachable,
  the dispatch run lost) is executed now, once;
- a slot whose API run may still be going (a timeout, an outage after it was accepted)
  gets that run back, polled to its end and recorded with its receipt, never a second
  execution;
- a slot the API executed and answered ``failed`` gets that answer back: one slot is one
  execution, and one receipt. To run the graph again for its instant, trigger it (a new
  key, a new row, a new receipt).

The body is never changed, not even to say who refired it, because the API answers a
known key with a different body with 409. The audit log records who refired it.
"""

import datetime as dt
from collections import Counter
from typing import Any

import sqlalchemy as sa

from graph_runs.core.cron import format_utc
from graph_runs.core.errors import InvalidInput
from graph_runs.core.statuses import FAILED, FIRING
from graph_runs.scheduling.schedules import schedule_row
from graph_runs.scheduling.triggers import (
    DEFAULT_MANUAL_OVERLAP,
    MAX_BACKFILL_SLOTS,
    OverlapGate,
    check_range,
    checked_overlap,
)
from graph_runs.store import slot_status
from graph_runs.store.tables import audit, run_ledger, schedules

MAX_REFIRE_SLOTS = MAX_BACKFILL_SLOTS


def uncount_failure(conn: sa.Connection, schedule_id: str, now: dt.datetime) -> None:
    """A failed slot that fires again is no longer failed: take it out of the counts.

    Its new outcome counts anew, in the failure count and in the streak that pauses the
    schedule: one slot fired three times is one failure, not three.
    """
    conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id)
        .values(
            runs_failed=schedules.c.runs_failed - 1,
            consecutive_failures=sa.case(
                (schedules.c.consecutive_failures > 0, schedules.c.consecutive_failures - 1),
                else_=0,
            ),
            updated_at=now,
        )
    )


def _failed_slots(
    conn: sa.Connection, schedule_id: str, start: dt.datetime, end: dt.datetime
) -> list[Any]:
    query = (
        sa.select(run_ledger)
        .where(
            run_ledger.c.schedule_id == schedule_id,
            run_ledger.c.scheduled_for >= start,
            run_ledger.c.scheduled_for <= end,
            run_ledger.c.status == FAILED,
        )
        .order_by(run_ledger.c.scheduled_for)
        .limit(MAX_REFIRE_SLOTS + 1)
    )
    if conn.dialect.name == "postgresql":
        # A late outcome (a poll, a reconciliation) recorded meanwhile waits for this one.
        query = query.with_for_update()
    return list(conn.execute(query))


def refire_schedule(
    conn: sa.Connection,
    schedule_id: str,
    *,
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    overlap: str = DEFAULT_MANUAL_OVERLAP,
    requested_by: str | None = None,
    source: str = "cli",
) -> dict[str, Any]:
    """Fire the schedule's failed slots in ``[start, end]`` again, oldest first, now.

    Each goes back to ``pending`` (or ``buffered``, under ``overlap``) with no batch, due
    now, and the sensor's next tick fires it like any slot. Under an overlap policy that
    skips it, a slot stays failed, as it was. Paused schedules are refired too: this is a
    person's explicit request, as a backfill is.
    """
    policy = checked_overlap(overlap)
    check_range(start, end)
    schedule_row(conn, schedule_id, lock=True)
    rows = _failed_slots(conn, schedule_id, start, end)
    if len(rows) > MAX_REFIRE_SLOTS:
        raise InvalidInput(
            "from",
            f"the range holds more than {MAX_REFIRE_SLOTS} failed slots; refire it in parts",
        )
    gate = OverlapGate(conn, schedule_id, policy, now)
    counts: Counter[str] = Counter()
    detail: list[dict[str, Any]] = []
    for row in rows:
        status, _reason = gate.next_status()
        slot = format_utc(row.scheduled_for)
        if status not in FIRING:
            counts["skipped_overlap"] += 1
            detail.append({"slot": slot, "status": FAILED, "refired": False, "why": status})
            continue
        moved = slot_status.refire_failed(
            conn,
            row,
            status,
            due_at=now,
            batch_id=None,
            dispatch_attempts=0,
            dagster_run_id=None,
            error_code=None,
            error_message=None,
            finished_at=None,
        )
        if not moved:  # SQLite: recorded anew since it was read; it is no longer failed
            counts["changed"] += 1
            continue
        uncount_failure(conn, schedule_id, now)
        counts["refired"] += 1
        detail.append(
            {
                "slot": slot,
                "status": status,
                "refired": True,
                "was": f"{row.error_code}: {row.error_message}",
                # The API's run under this key, if it has one: the refire gets it back.
                "api_run_id": row.api_run_id,
            }
        )
    audit(
        conn,
        at=now,
        actor=requested_by or source,
        action="schedule.refire",
        entity_type="schedule",
        entity_id=schedule_id,
        detail={"from": format_utc(start), "to": format_utc(end), "overlap": policy, **counts},
    )
    return {
        "schedule_id": schedule_id,
        "from": format_utc(start),
        "to": format_utc(end),
        "failed": len(rows),
        "refired": counts["refired"],
        "skipped_overlap": counts["skipped_overlap"],
        "overlap": policy,
        "detail": detail,
    }
