"""User schedules: the Python API behind the CLI.

Create, upsert, update, pause, resume and delete, each in the caller's transaction and each
audited. Conflicts and unknown schedules raise ``Conflict`` and ``NotFound``; bad input
raises ``InvalidInput`` naming the field, and nothing is written.
"""

import datetime as dt
from typing import Any

import sqlalchemy as sa

from graph_runs.access.grants import SCOPE_PREFIX, billing_account_of, get_grant
from graph_runs.core.cron import format_utc, format_utc_or_none
from graph_runs.core.errors import Conflict, InvalidInput, NotFound
from graph_runs.core.ids import new_id
from graph_runs.core.ledger_rows import slot_row
from graph_runs.core.money import micros_to_usd
from graph_runs.core.policies import DEFAULT_APPROVAL_TIMEOUT, Policies, format_duration
from graph_runs.core.schedule_spec import (
    TIMING_FIELDS,
    UNLIMITED,
    ScheduleLimits,
    ScheduleSpec,
    cursor_of,
    row_as_raw,
    spec_from_row,
    validate_spec,
)
from graph_runs.core.slot_plan import ScheduleState, paused_slots, slots_after
from graph_runs.scheduling.in_flight import cancel_in_flight, unclaim_ahead
from graph_runs.store import slot_status
from graph_runs.store.tables import audit, schedules

# Who a schedule's automatic pause is attributed to.
FAILURE_PAUSER = "graph-runs (consecutive failures)"
# Slots that came due while paused are written on resume, up to this many; the rest are
# counted in the audit log.
MAX_PAUSED_SLOTS_RECORDED = 10_000
# A one-time run_at this far behind the clock is still "now" (a slow client, a skewed one).
RUN_AT_GRACE = dt.timedelta(minutes=1)


def next_due(
    spec: ScheduleSpec, schedule_id: str, after: dt.datetime
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The first slot strictly after ``after`` within the schedule's bounds, and its due time.

    A one-time schedule's slot is its run_at, even in the past: it then fires under the
    catch-up policy. ``(None, None)`` means the schedule has no slot left.
    """
    policies = spec.policies()
    cron = spec.cron_schedule()
    if cron is None:
        assert spec.run_at is not None
        return spec.run_at, policies.due_at(schedule_id, spec.run_at)
    slot = next(slots_after(cron, policies, after), None)
    return (None, None) if slot is None else (slot, policies.due_at(schedule_id, slot))


def _check_grant(conn: sa.Connection, spec: ScheduleSpec, now: dt.datetime) -> None:
    """Refuse a grant that could not run the schedule's slots, rather than fail each later."""
    grant = get_grant(conn, spec.grant_id)
    if grant is None:
        raise InvalidInput("grant_id", f"grant {spec.grant_id} not found")
    if grant.owner != spec.owner:
        raise InvalidInput(
            "grant_id", f"grant {grant.id} belongs to {grant.owner}, not {spec.owner}"
        )
    if not grant.covers(spec.graph_id):
        raise InvalidInput(
            "grant_id",
            f"grant {grant.id} cannot run graph {spec.graph_id}: it has no scope "
            f"{SCOPE_PREFIX}{spec.graph_id} (its scopes: {', '.join(grant.scopes)})",
        )
    if grant.revoked_at is not None:
        raise InvalidInput("grant_id", f"grant {grant.id} was revoked")
    if grant.expires_at is not None and grant.expires_at <= now:
        raise InvalidInput(
            "grant_id", f"grant {grant.id} expired at {format_utc(grant.expires_at)}"
        )


def _check_run_at(spec: ScheduleSpec, now: dt.datetime) -> None:
    """A one-time slot already past would only be recorded missed (or fire late, once)."""
    if spec.run_at is not None and spec.run_at < now - RUN_AT_GRACE:
        raise InvalidInput(
            "run_at",
            f"{format_utc(spec.run_at)} is in the past (now {format_utc(now)}); to run it "
            "now, give a time from now on or use `schedules trigger`",
        )


def _by_external_id(conn: sa.Connection, owner: str, external_id: str) -> Any:
    return conn.execute(
        sa.select(schedules).where(
            schedules.c.owner == owner,
            schedules.c.external_id == external_id,
            schedules.c.status != "deleted",
        )
    ).one_or_none()


def create_schedule(
    conn: sa.Connection,
    raw: dict[str, Any],
    *,
    limits: ScheduleLimits,
    now: dt.datetime,
    actor: str = "cli",
) -> dict[str, Any]:
    """Validate and store a schedule; returns its view. Nothing is written on error.

    Raises Conflict when the owner already has a schedule with the same external id.
    """
    spec = validate_spec(raw, limits, now)
    _check_grant(conn, spec, now)
    _check_run_at(spec, now)
    if spec.external_id is not None:
        existing = _by_external_id(conn, spec.owner, spec.external_id)
        if existing is not None:
            raise Conflict(
                f"{spec.owner} already has schedule {existing.id} with external id "
                f"{spec.external_id!r}; use `schedules upsert` to update it"
            )
    count = conn.execute(
        sa.select(sa.func.count())
        .select_from(schedules)
        .where(schedules.c.owner == spec.owner, schedules.c.status != "deleted")
    ).scalar_one()
    if count >= limits.max_schedules_per_owner:
        raise InvalidInput(
            "owner",
            f"{spec.owner} has {count} schedules; the limit is {limits.max_schedules_per_owner}",
        )
    if spec.end_at is not None and spec.end_at <= now:
        raise InvalidInput("end_at", f"{format_utc(spec.end_at)} is in the past")
    schedule_id = new_id("sch")
    slot, due = next_due(spec, schedule_id, now)
    if slot is None:
        raise InvalidInput("end_at", "no slot of the cron expression falls before it")
    try:
        conn.execute(
            schedules.insert().values(
                id=schedule_id,
                **spec.stored(),
                enabled=True,
                status="active",
                next_run_at=due,
                # Cron slots start after now; a one-time slot may lie in the past and still
                # fire under the catch-up policy, so its cursor starts before it.
                slot_cursor=now if spec.cron is not None else None,
                created_at=now,
                updated_at=now,
            )
        )
    except sa.exc.IntegrityError:
        # Another writer created the same external id between our check and our insert.
        raise Conflict(
            f"{spec.owner} already has a schedule with external id {spec.external_id!r}"
        ) from None
    audit(
        conn,
        at=now,
        actor=actor,
        action="schedule.create",
        entity_type="schedule",
        entity_id=schedule_id,
    )
    return get_schedule(conn, schedule_id)


def upsert_schedule(
    conn: sa.Connection,
    raw: dict[str, Any],
    *,
    limits: ScheduleLimits,
    now: dt.datetime,
    actor: str = "cli",
) -> tuple[dict[str, Any], str]:
    """Create the owner's schedule with this external id, or set it to ``raw`` in place.

    ``raw`` is the whole desired spec: a field it leaves out returns to its default, so an
    application can sync its state without reading ours first. Returns the view and
    ``"created"``, ``"updated"`` or ``"unchanged"``. Pause state is not part of the spec and
    is kept.
    """
    if not raw.get("external_id"):
        raise InvalidInput("external_id", "is required to upsert")
    if not raw.get("owner"):
        raise InvalidInput("owner", "is required to upsert")
    existing = _by_external_id(conn, raw["owner"], raw["external_id"])
    if existing is None:
        return create_schedule(conn, raw, limits=limits, now=now, actor=actor), "created"
    view, changed = _apply_spec(conn, existing, raw, limits=limits, now=now, actor=actor)
    return view, "updated" if changed else "unchanged"


def update_schedule(
    conn: sa.Connection,
    schedule_id: str,
    changes: dict[str, Any],
    *,
    limits: ScheduleLimits,
    now: dt.datetime,
    actor: str = "cli",
) -> dict[str, Any]:
    """Change some fields of a schedule; the others keep their values.

    Changing when it fires (cron, time zone, run_at, jitter, start_at) recomputes the next
    slot from now: slots between the old and the new timing are not fired.
    """
    row = schedule_row(conn, schedule_id)
    if "owner" in changes and changes["owner"] != row.owner:
        raise InvalidInput("owner", "cannot change; create a schedule for the new owner")
    raw = {**row_as_raw(row), **changes}
    if "run_at" in changes and changes["run_at"] is not None and "cron" not in changes:
        raw["cron"] = None
    if "cron" in changes and changes["cron"] is not None and "run_at" not in changes:
        raw["run_at"] = None
    view, _changed = _apply_spec(conn, row, raw, limits=limits, now=now, actor=actor)
    return view


def replace_schedule(
    conn: sa.Connection,
    schedule_id: str,
    raw: dict[str, Any],
    *,
    limits: ScheduleLimits,
    now: dt.datetime,
    actor: str = "cli",
) -> tuple[dict[str, Any], bool]:
    """Set a schedule to the whole spec ``raw``, as upsert does.

    Returns the view and whether anything changed. A field ``raw`` leaves out returns to its
    default.
    """
    row = schedule_row(conn, schedule_id)
    if raw.get("owner", row.owner) != row.owner:
        raise InvalidInput("owner", "cannot change; create a schedule for the new owner")
    return _apply_spec(conn, row, {**raw, "owner": row.owner}, limits=limits, now=now, actor=actor)


def _apply_spec(
    conn: sa.Connection,
    row: Any,
    raw: dict[str, Any],
    *,
    limits: ScheduleLimits,
    now: dt.datetime,
    actor: str,
) -> tuple[dict[str, Any], bool]:
    spec = validate_spec(raw, limits, now)
    # The stored spec, read without limits: it is compared with, not accepted. A stored row
    # that is invalid (status `error`) is being fixed: everything counts as changed.
    try:
        current: ScheduleSpec | None = validate_spec(row_as_raw(row), UNLIMITED, now)
    except InvalidInput:
        current = None
    if spec == current:
        return view(row), False
    _check_grant(conn, spec, now)
    if current is None or spec.run_at != current.run_at:
        _check_run_at(spec, now)
    if spec.external_id is not None and spec.external_id != row.external_id:
        other = _by_external_id(conn, spec.owner, spec.external_id)
        if other is not None:
            raise Conflict(
                f"{spec.owner} already has schedule {other.id} with external id "
                f"{spec.external_id!r}"
            )
    changed = sorted(
        name
        for name in ScheduleSpec.model_fields
        if current is None or getattr(spec, name) != getattr(current, name)
    )
    # The change and its audit entry stand or fall together, whatever the caller does with
    # its transaction after an error; the entry is written last, once the change is made.
    try:
        with conn.begin_nested():
            # A slot claimed ahead was snapshotted from the old spec: it is claimed again
            # from the new one (or not at all, if the new timing has no such slot).
            unclaimed = unclaim_ahead(conn, row.id, now=now)
            values = _updated_values(
                spec, current, row, runs_total=row.runs_total - unclaimed, now=now
            )
            conn.execute(schedules.update().where(schedules.c.id == row.id).values(**values))
            audit(
                conn,
                at=now,
                actor=actor,
                action="schedule.update",
                entity_type="schedule",
                entity_id=row.id,
                detail={"changed": changed, "unclaimed": unclaimed},
            )
    except sa.exc.IntegrityError:
        # Another writer took the same external id between our check and our update.
        raise Conflict(
            f"{spec.owner} already has a schedule with external id {spec.external_id!r}"
        ) from None
    return get_schedule(conn, row.id), True


def _updated_values(
    spec: ScheduleSpec,
    current: ScheduleSpec | None,
    row: Any,
    *,
    runs_total: int,
    now: dt.datetime,
) -> dict[str, Any]:
    """The columns an edit writes; a new timing (or new bounds on a completed one) replans."""
    values: dict[str, Any] = {**spec.stored(), "updated_at": now}
    retimed = current is None or any(getattr(spec, f) != getattr(current, f) for f in TIMING_FIELDS)
    rebounded = current is None or (spec.end_at, spec.max_runs) != (
        current.end_at,
        current.max_runs,
    )
    if retimed or (rebounded and row.status == "completed"):
        if spec.end_at is not None and spec.end_at <= now:
            raise InvalidInput("end_at", f"{format_utc(spec.end_at)} is in the past")
        slot, due = next_due(spec, row.id, now)
        exhausted = slot is None or (spec.max_runs is not None and runs_total >= spec.max_runs)
        values.update(
            next_run_at=None if exhausted else due,
            slot_cursor=now if spec.cron is not None else None,
            status="completed" if exhausted else "active",
            last_error=None if row.status == "error" else row.last_error,
        )
    return values


def schedule_row(
    conn: sa.Connection, schedule_id: str, *, lock: bool = False, deleted: bool = False
) -> Any:
    """The schedules row, unless deleted (or even then, with ``deleted``); raises NotFound.

    With ``lock``, the row is held until the transaction ends (on Postgres; SQLite's write
    transactions are serial), as ``in_flight.lock_schedules`` explains.
    """
    query = sa.select(schedules).where(schedules.c.id == schedule_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    if row is None or (row.status == "deleted" and not deleted):
        raise NotFound(f"schedule {schedule_id} not found")
    return row


def policies_view(row: Any) -> dict[str, Any]:
    """The policies in force for a row, as describe and list show them."""
    policies = Policies.from_row(row)
    return {
        "overlap": policies.overlap,
        "catchup": policies.catchup,
        "catchup_window": format_duration(int(policies.catchup_window.total_seconds())),
        "jitter": format_duration(policies.jitter_seconds),
        "start_at": format_utc_or_none(policies.start_at),
        "end_at": format_utc_or_none(policies.end_at),
        "max_runs": policies.max_runs,
        "pause_after_failures": policies.pause_after_failures,
        "requires_approval": bool(row.requires_approval),
        "approval_timeout": format_duration(
            row.approval_timeout_seconds or int(DEFAULT_APPROVAL_TIMEOUT.total_seconds())
        ),
        "on_approval_timeout": row.on_approval_timeout or "skip",
    }


def view(row: Any) -> dict[str, Any]:
    """A JSON-ready view of a schedules row."""
    max_cost = micros_to_usd(row.max_cost_micros)
    return {
        "id": row.id,
        "external_id": row.external_id,
        "owner": row.owner,
        "graph_id": row.graph_id,
        "input": row.input,
        "cron": row.cron,
        "timezone": row.timezone,
        "run_at": format_utc_or_none(row.run_at),
        "enabled": bool(row.enabled),
        "status": row.status,
        "grant_id": row.grant_id,
        "max_cost_usd": None if max_cost is None else str(max_cost),
        "timeout_seconds": row.timeout_seconds,
        "policies": policies_view(row),
        "next_run_at": format_utc_or_none(row.next_run_at),
        "last_run_at": format_utc_or_none(row.last_run_at),
        "runs_total": row.runs_total,
        "runs_succeeded": row.runs_succeeded,
        "runs_failed": row.runs_failed,
        "consecutive_failures": row.consecutive_failures,
        "last_error": row.last_error,
        "pause_note": row.pause_note,
        "paused_by": row.paused_by,
        "paused_at": format_utc_or_none(row.paused_at),
        "created_at": format_utc_or_none(row.created_at),
    }


def get_schedule(conn: sa.Connection, schedule_id: str) -> dict[str, Any]:
    """The schedule's view; raises NotFound."""
    return view(schedule_row(conn, schedule_id))


def find_schedule(conn: sa.Connection, owner: str, external_id: str) -> dict[str, Any]:
    """The owner's schedule with this external id; raises NotFound."""
    row = _by_external_id(conn, owner, external_id)
    if row is None:
        raise NotFound(f"{owner} has no schedule with external id {external_id!r}")
    return view(row)


def list_schedules(conn: sa.Connection, owner: str | None = None) -> list[dict[str, Any]]:
    """Schedules that are not deleted, oldest first."""
    query = (
        sa.select(schedules)
        .where(schedules.c.status != "deleted")
        .order_by(schedules.c.created_at, schedules.c.id)
    )
    if owner is not None:
        query = query.where(schedules.c.owner == owner)
    return [view(row) for row in conn.execute(query)]


def pause_schedule(
    conn: sa.Connection,
    schedule_id: str,
    *,
    now: dt.datetime,
    note: str | None,
    by: str = "cli",
    terminate: bool = False,
) -> dict[str, Any]:
    """Stop a schedule from firing and cancel its runs that have not started.

    A running run finishes unless ``terminate``. Pausing a paused schedule changes nothing.
    """
    row = schedule_row(conn, schedule_id)
    if row.enabled:
        conn.execute(
            schedules.update()
            .where(schedules.c.id == schedule_id)
            .values(enabled=False, pause_note=note, paused_by=by, paused_at=now, updated_at=now)
        )
        # A slot claimed ahead has not come due: if the schedule is still paused at its
        # instant, the resume records it skipped_paused; resumed before, it fires.
        unclaimed = unclaim_ahead(conn, schedule_id, now=now)
        cancelled = cancel_in_flight(
            conn,
            schedule_id,
            now=now,
            code="schedule_paused",
            message=f"the schedule was paused by {by}" + (f": {note}" if note else ""),
            terminate=terminate,
        )
        audit(
            conn,
            at=now,
            actor=by,
            action="schedule.pause",
            entity_type="schedule",
            entity_id=schedule_id,
            detail={
                "note": note,
                "terminate": terminate,
                "unclaimed": unclaimed,
                "cancelled": cancelled.never_started,
                "cancelling": cancelled.cancelling,
            },
        )
    return get_schedule(conn, schedule_id)


def resume_schedule(
    conn: sa.Connection,
    schedule_id: str,
    *,
    now: dt.datetime,
    limits: ScheduleLimits,
    by: str = "cli",
) -> dict[str, Any]:
    """Fire again from now on. Resuming an active schedule changes nothing.

    The slots that came due while paused are not fired: they go into the ledger as
    ``skipped_paused``, so that every slot has a status. Resuming a schedule in ``error``
    revalidates it first, so that a fixed row is served.
    """
    row = schedule_row(conn, schedule_id)
    if row.enabled and row.status == "active":
        return view(row)
    spec = spec_from_row(row, limits, now)
    skipped, more = _record_paused_slots(conn, row, spec, now) if not row.enabled else (0, False)
    if row.status == "completed":
        next_run_at, status = None, "completed"
    else:
        slot, due = next_due(spec, row.id, now)
        if spec.cron is None and slot is not None and slot <= now:
            # A one-time slot that passed while paused was recorded above; nothing is left.
            slot = due = None
        next_run_at, status = due, "active" if slot is not None else "completed"
    conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id)
        .values(
            enabled=True,
            status=status,
            last_error=None if row.status == "error" else row.last_error,
            consecutive_failures=0,
            pause_note=None,
            paused_by=None,
            paused_at=None,
            next_run_at=next_run_at,
            slot_cursor=now if spec.cron is not None else row.slot_cursor,
            updated_at=now,
        )
    )
    audit(
        conn,
        at=now,
        actor=by,
        action="schedule.resume",
        entity_type="schedule",
        entity_id=schedule_id,
        detail={"skipped_paused": skipped, "more_not_recorded": more},
    )
    return get_schedule(conn, schedule_id)


def _record_paused_slots(
    conn: sa.Connection, row: Any, spec: ScheduleSpec, now: dt.datetime
) -> tuple[int, bool]:
    if row.status != "active" and row.status != "error":
        return 0, False
    slots, more = paused_slots(
        spec.cron_schedule(),
        spec.run_at,
        ScheduleState(row.id, spec.policies(), cursor=cursor_of(row, spec, now)),
        now=now,
        limit=MAX_PAUSED_SLOTS_RECORDED,
    )
    account = billing_account_of(conn, row.grant_id)
    rows = [
        slot_row(
            row,
            planned.slot,
            planned.status,
            now=now,
            billing_account=account,
            reason=planned.reason,
        )
        for planned in slots
    ]
    return slot_status.insert_new(conn, rows), more


def delete_schedule(
    conn: sa.Connection,
    schedule_id: str,
    *,
    now: dt.datetime,
    by: str = "cli",
    terminate: bool = False,
) -> bool:
    """Delete a schedule, keeping its ledger and receipts; returns False if it was not there.

    Deleting an unknown or deleted schedule succeeds and changes nothing. The row stays,
    marked ``deleted``, so that the ledger keeps its schedule; the sensor removes its
    partition on its next tick. Runs that have not started are cancelled; a running run
    finishes unless ``terminate``.
    """
    result = conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id, schedules.c.status != "deleted")
        .values(status="deleted", enabled=False, deleted_at=now, updated_at=now, next_run_at=None)
    )
    if result.rowcount:
        cancelled = cancel_in_flight(
            conn,
            schedule_id,
            now=now,
            code="schedule_deleted",
            message=f"the schedule was deleted by {by} before this run started",
            terminate=terminate,
        )
        audit(
            conn,
            at=now,
            actor=by,
            action="schedule.delete",
            entity_type="schedule",
            entity_id=schedule_id,
            detail={
                "terminate": terminate,
                "cancelled": cancelled.never_started,
                "cancelling": cancelled.cancelling,
            },
        )
    return bool(result.rowcount)
