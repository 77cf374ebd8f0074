"""Runs of a schedule outside its timetable: trigger now, backfill, and Dagster partition runs.

Each becomes a ledger row like a scheduled slot's, and the sensor asks Dagster for its run
on its next tick, so every run goes through the same job, ops, grant check and receipt.

- Trigger now (kind ``manual``) gets its own key, ``manual:{schedule}:{request}``; a caller
  that passes the same request key twice gets one run.
- Backfill (kind ``backfill``) keeps each slot's key ``sched:{schedule}:{slot}``: a slot that
  already ran is not run again, and a slot that never ran (missed, skipped, cancelled before
  its Dagster run existed) is run now.
- A run of ``graph_run_job`` launched from the Dagster UI for a partition (a schedule) has no
  ledger row yet; it is a trigger-now keyed by its root run, so a re-execution is the same.

Neither counts towards ``max_runs``, as in Temporal's remaining actions.
"""

import datetime as dt
from collections import Counter
from typing import Any

import sqlalchemy as sa

from graph_runs.access.grants import billing_account_of
from graph_runs.core.cron import format_utc
from graph_runs.core.errors import InvalidInput
from graph_runs.core.ids import new_id
from graph_runs.core.ledger_rows import manual_key, schedule_run_row, slot_key
from graph_runs.core.policies import OVERLAP_POLICIES
from graph_runs.core.schedule_spec import (
    UNLIMITED,
    ScheduleLimits,
    require_in_range,
    spec_from_row,
)
from graph_runs.core.slot_plan import overlap_status
from graph_runs.core.statuses import BUFFERED, FIRING, NEVER_RAN, QUEUED
from graph_runs.scheduling.claim import claim_due_slots
from graph_runs.scheduling.in_flight import InFlight, cancel_in_flight, in_flight_counts
from graph_runs.scheduling.schedules import schedule_row
from graph_runs.store import slot_status
from graph_runs.store.tables import audit, run_ledger

# The overlap policy a trigger or backfill uses unless told otherwise: the user asked for
# these runs, so they run.
DEFAULT_MANUAL_OVERLAP = "allow_all"
MAX_BACKFILL_SLOTS = 1_000


def check_range(start: dt.datetime, end: dt.datetime) -> None:
    """A backfill's or refire's ``from`` and ``to``: each in range, and in order."""
    require_in_range("from", start)
    require_in_range("to", end)
    if end < start:
        raise InvalidInput("to", "is before from")


def checked_overlap(policy: str) -> str:
    """``policy``, if it is an overlap policy; the caller's field ``overlap`` otherwise."""
    if policy not in OVERLAP_POLICIES:
        raise InvalidInput("overlap", f"{policy!r} is not one of {', '.join(OVERLAP_POLICIES)}")
    return policy


def _insert_manual(
    conn: sa.Connection,
    schedule: Any,
    key: str,
    status: str,
    now: dt.datetime,
    source: str,
    requested_by: str | None,
    *,
    reason: str | None = None,
    dagster_run_id: str | None = None,
) -> None:
    """Write a trigger-now row unless one with ``key`` exists."""
    values = schedule_run_row(
        schedule,
        idempotency_key=key,
        scheduled_for=None,
        status=status,
        now=now,
        billing_account=billing_account_of(conn, schedule.grant_id),
        trigger_kind="manual",
        trigger_source=source,
        requested_by=requested_by,
        reason=reason,
    )
    values["dagster_run_id"] = dagster_run_id
    slot_status.insert_new(conn, [values])


class OverlapGate:
    """Applies an overlap policy to a series of new runs of one schedule, oldest first."""

    def __init__(self, conn: sa.Connection, schedule_id: str, policy: str, now: dt.datetime):
        going = in_flight_counts(conn, [schedule_id]).get(schedule_id, InFlight())
        self.conn, self.schedule_id, self.policy, self.now = conn, schedule_id, policy, now
        self.busy, self.buffered = going.active > 0, going.buffered

    def next_status(self) -> tuple[str, str | None]:
        """The status of the next run asked for, and why it does not fire, if it does not."""
        if self.policy == "cancel_other" and self.busy:
            cancel_in_flight(
                self.conn,
                self.schedule_id,
                now=self.now,
                code="cancelled_by_overlap",
                message="a newer run of the schedule was requested (overlap cancel_other)",
                terminate=True,
            )
        status, reason = overlap_status(self.policy, self.busy, self.buffered)
        if status in FIRING:
            self.busy = True
            self.buffered += status == BUFFERED
        return status, reason


# Claims a backfill makes of its schedule's own due slots before it runs what never ran.
_MAX_CATCH_UP_CLAIMS = 10


def _up_to_date(conn: sa.Connection, row: Any, limits: ScheduleLimits, now: dt.datetime) -> Any:
    """The schedule's row (locked by the caller) once its own slots due by ``now`` are claimed.

    The sensor's claim owns the slots after a schedule's cursor: it would count, cancel (under
    cancel_other) or complete the schedule on a slot a backfill had written there. So the
    backfill first claims them, as the sensor's next tick would, under the schedule's own
    policies; then it runs those of its range that never ran (missed, say) like any other.
    A paused schedule is not claimed: resume records its slots, and keeps a backfill's.
    """
    for _ in range(_MAX_CATCH_UP_CLAIMS):
        if not _claimable(row, now):
            return row
        claim_due_slots(conn, now=now, schedule_limits=limits, schedule_ids=[row.id])
        row = schedule_row(conn, row.id)
    if _claimable(row, now):
        raise InvalidInput(
            "to",
            f"the schedule's own slots are claimed up to {format_utc(row.slot_cursor)} only; "
            "backfill after the sensor's next ticks",
        )
    return row


def _claimable(row: Any, now: dt.datetime) -> bool:
    """The sensor would claim slots of this schedule if it ticked now."""
    return bool(row.enabled and row.status == "active") and (
        row.next_run_at is None or row.next_run_at <= now
    )


def trigger_schedule(
    conn: sa.Connection,
    schedule_id: str,
    *,
    now: dt.datetime,
    requested_by: str | None = None,
    request_key: str | None = None,
    overlap: str = DEFAULT_MANUAL_OVERLAP,
    source: str = "cli",
    actor: str | None = None,
) -> dict[str, Any]:
    """Run the schedule's graph once, now (kind ``manual``), paused or not.

    The same ``request_key`` twice is one run: the second call returns the first row with
    ``created`` false. ``actor`` is who the audit log names when that is not who asked (the
    API key a request came with).
    """
    row = schedule_row(conn, schedule_id, lock=True)
    # Revalidated as the sensor would, whatever the row's status (``error`` included): the
    # row may be another application's, and a trigger is no way around the checks.
    spec_from_row(row, UNLIMITED, now)
    key = manual_key(schedule_id, request_key or new_id("trg"))
    existing = conn.execute(
        sa.select(run_ledger).where(run_ledger.c.idempotency_key == key)
    ).one_or_none()
    if existing is None:
        status, reason = OverlapGate(conn, schedule_id, checked_overlap(overlap), now).next_status()
        _insert_manual(conn, row, key, status, now, source, requested_by, reason=reason)
        audit(
            conn,
            at=now,
            actor=actor or requested_by or source,
            action="schedule.trigger",
            entity_type="schedule",
            entity_id=schedule_id,
            detail={"idempotency_key": key, "status": status},
        )
    stored = conn.execute(sa.select(run_ledger).where(run_ledger.c.idempotency_key == key)).one()
    return {
        "schedule_id": schedule_id,
        "ledger_id": stored.id,
        "idempotency_key": key,
        "status": stored.status,
        "created": existing is None,
    }


def backfill_schedule(
    conn: sa.Connection,
    schedule_id: str,
    *,
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime,
    limits: ScheduleLimits,
    overlap: str = DEFAULT_MANUAL_OVERLAP,
    requested_by: str | None = None,
    source: str = "cli",
    actor: str | None = None,
) -> dict[str, Any]:
    """Run every slot of the schedule in ``[start, end]``, oldest first (kind ``backfill``).

    Returns how many slots will run and how many already had a run, slot by slot. ``actor``
    is who the audit log names when that is not who asked (the API key a request came with).
    """
    policy = checked_overlap(overlap)
    check_range(start, end)
    if end > now:
        raise InvalidInput("to", f"{format_utc(end)} is in the future; backfill fills the past")
    row = schedule_row(conn, schedule_id, lock=True)
    spec = spec_from_row(row, limits, now)
    cron = spec.cron_schedule()
    if cron is None:
        assert spec.run_at is not None
        slots = [spec.run_at] if start <= spec.run_at <= end else []
    else:
        slots = cron.fires_between(start, end, limit=MAX_BACKFILL_SLOTS + 1)
    if len(slots) > MAX_BACKFILL_SLOTS:
        raise InvalidInput(
            "from",
            f"the range holds more than {MAX_BACKFILL_SLOTS} slots; backfill it in parts",
        )
    row = _up_to_date(conn, row, limits, now)
    existing = {
        r.scheduled_for: r
        for r in conn.execute(
            sa.select(
                run_ledger.c.id,
                run_ledger.c.scheduled_for,
                run_ledger.c.status,
                run_ledger.c.dagster_run_id,
                run_ledger.c.api_run_id,
            ).where(
                run_ledger.c.schedule_id == schedule_id,
                run_ledger.c.scheduled_for >= start,
                run_ledger.c.scheduled_for <= end,
            )
        )
    }
    account = billing_account_of(conn, row.grant_id)
    overlapper = OverlapGate(conn, schedule_id, policy, now)
    report: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    for slot in slots:
        found = existing.get(slot)
        # A slot runs again only if it never ran: no Dagster run (whose run key Dagster would
        # refuse to reuse) and no call to the API.
        if found is not None and not (
            found.status in NEVER_RAN and found.dagster_run_id is None and not found.api_run_id
        ):
            counts["already"] += 1
            report.append({"slot": format_utc(slot), "status": found.status, "already": True})
            continue
        status, reason = overlapper.next_status()
        counts["ran" if status in FIRING else status] += 1
        if found is None:
            values = schedule_run_row(
                row,
                idempotency_key=slot_key(schedule_id, slot),
                scheduled_for=slot,
                status=status,
                now=now,
                billing_account=account,
                trigger_kind="backfill",
                trigger_source=source,
                requested_by=requested_by,
                reason=reason,
            )
            slot_status.insert_new(conn, [values])
        else:
            final = status not in FIRING
            slot_status.refire(
                conn,
                found,
                status,
                trigger_kind="backfill",
                trigger_source=source,
                requested_by=requested_by,
                error_code=status if final else None,
                error_message=reason if final else None,
                finished_at=now if final else None,
                # It fires now, in a batch of its own making.
                due_at=now,
                batch_id=None,
            )
        report.append({"slot": format_utc(slot), "status": status, "already": False})
    audit(
        conn,
        at=now,
        actor=actor or requested_by or source,
        action="schedule.backfill",
        entity_type="schedule",
        entity_id=schedule_id,
        detail={"from": format_utc(start), "to": format_utc(end), **counts},
    )
    return {
        "schedule_id": schedule_id,
        "from": format_utc(start),
        "to": format_utc(end),
        "slots": len(slots),
        "ran": counts["ran"],
        "already": counts["already"],
        "skipped_overlap": counts["skipped_overlap"],
        "overlap": policy,
        "detail": report,
    }


def request_partition_run(
    conn: sa.Connection,
    schedule_id: str,
    *,
    dagster_run_id: str,
    root_run_id: str,
    requested_by: str | None,
    now: dt.datetime,
) -> str:
    """The id of the queued ledger row of a run launched from Dagster for a schedule's partition.

    A partition backfill in the Dagster UI launches one such run per selected schedule: each
    is a trigger-now. Its key names the root run, so re-executing it reuses the row. The
    caller starts the row in the same transaction (``graph_runs.dispatch.ledger.start_run``).
    """
    row = schedule_row(conn, schedule_id)
    spec_from_row(row, UNLIMITED, now)  # as for any trigger: raises InvalidInput
    key = manual_key(schedule_id, f"dagster:{root_run_id}")
    _insert_manual(
        conn, row, key, QUEUED, now, "dagster", requested_by, dagster_run_id=dagster_run_id
    )
    return str(
        conn.execute(
            sa.select(run_ledger.c.id).where(run_ledger.c.idempotency_key == key)
        ).scalar_one()
    )
