"""Turning due schedules into ledger rows: the database half of a sensor tick.

A tick has two steps, each its own transaction:

1. ``claim_due_slots`` writes every due slot into the ledger (``pending`` if it fires,
   ``missed`` if catch-up rules say it does not) and advances each schedule's
   ``next_run_at``, all in one transaction. The ledger's unique (schedule, slot) constraint
   makes a replayed claim harmless.
2. The sensor asks for a Dagster run for every ``pending`` row, whether claimed this tick or
   by a tick that died before Dagster created its runs. The run key is the slot's
   idempotency key, so asking twice creates one run.

Nothing here imports Dagster, so the tick's logic is tested at exact instants without it.
"""

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from graph_runs.cron import format_utc
from graph_runs.db import insert_ignoring_conflicts
from graph_runs.errors import InvalidInput
from graph_runs.ids import new_id
from graph_runs.ledger import MISSED, PENDING, QUEUED, slot_key
from graph_runs.schedules import ScheduleLimits, ScheduleSpec, spec_from_row
from graph_runs.tables import (
    ACTIVE_SCHEDULE,
    UTCDateTime,
    audit,
    execution_grants,
    graph_runs,
    schedules,
)

logger = logging.getLogger(__name__)

# Until issue-level catch-up policies exist: after downtime, the most recent missed slot
# within this window fires and every other missed slot is recorded as `missed`.
DEFAULT_CATCHUP_WINDOW = dt.timedelta(hours=1)


@dataclass(frozen=True)
class TickLimits:
    """Bounds on one tick's work, so that evaluation stays far below Dagster's 60 s timeout."""

    max_schedules: int = 2_000
    max_slots_per_schedule: int = 500
    max_pending: int = 1_000
    catchup_window: dt.timedelta = DEFAULT_CATCHUP_WINDOW


@dataclass
class ClaimResult:
    """What one claim did, for the sensor's log and its skip reason."""

    schedules_seen: int = 0
    fired: int = 0
    missed: int = 0
    completed: list[str] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    more_due: bool = False


def claim_due_slots(
    conn: sa.Connection,
    *,
    now: dt.datetime,
    schedule_limits: ScheduleLimits,
    tick_limits: TickLimits = TickLimits(),
) -> ClaimResult:
    """Write every due slot into the ledger and advance ``next_run_at``, in ``conn``'s transaction.

    Due means enabled, active, and ``next_run_at`` at or before ``now``, or missing (a row
    that another application inserted; its first slot is computed from ``created_at``).
    """
    result = ClaimResult()
    ids = _due_ids(conn, now, tick_limits.max_schedules)
    result.more_due = len(ids) > tick_limits.max_schedules
    ids = ids[: tick_limits.max_schedules]
    if not ids:
        return result
    rows, broken = _load_rows(conn, ids)
    for schedule_id, problem in broken:
        _mark_invalid(conn, schedule_id, problem, now)
        result.invalid.append((schedule_id, problem))
    accounts = _billing_accounts(conn, {row.grant_id for row in rows})
    ledger_rows: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for row in rows:
        result.schedules_seen += 1
        try:
            spec = spec_from_row(row, schedule_limits, now)
        except InvalidInput as exc:
            _mark_invalid(conn, row.id, str(exc), now)
            result.invalid.append((row.id, str(exc)))
            continue
        plan = _plan_schedule(row, spec, now, tick_limits)
        for slot, fires in plan.slots:
            ledger_rows.append(_ledger_row(row, spec, slot, fires, now, accounts, tick_limits))
        result.fired += plan.fired
        result.missed += len(plan.slots) - plan.fired
        if plan.completed:
            result.completed.append(row.id)
        updates.append(
            {
                "b_id": row.id,
                "b_next": plan.next_run_at,
                "b_status": "completed" if plan.completed else "active",
                "b_fired": plan.fired,
                "b_last": plan.last_fired,
                "b_now": now,
            }
        )
    insert_ignoring_conflicts(conn, graph_runs, ledger_rows)
    if updates:
        conn.execute(
            schedules.update()
            .where(schedules.c.id == sa.bindparam("b_id"))
            .values(
                next_run_at=sa.bindparam("b_next"),
                status=sa.bindparam("b_status"),
                runs_total=schedules.c.runs_total + sa.bindparam("b_fired"),
                last_run_at=sa.func.coalesce(
                    sa.bindparam("b_last", type_=UTCDateTime), schedules.c.last_run_at
                ),
                updated_at=sa.bindparam("b_now"),
            ),
            updates,
        )
    return result


def _due_ids(conn: sa.Connection, now: dt.datetime, limit: int) -> list[str]:
    """Ids of due schedules, oldest slot first, read from the partial index alone.

    Two queries rather than one with OR, so that each is an index range scan. On Postgres the
    rows are locked and locked rows skipped, so that two ticks never claim one schedule.
    """
    locked = conn.dialect.name == "postgresql"
    queries = [
        sa.select(schedules.c.id)
        .where(ACTIVE_SCHEDULE, schedules.c.next_run_at.is_(None))
        .limit(limit + 1),
        sa.select(schedules.c.id)
        .where(ACTIVE_SCHEDULE, schedules.c.next_run_at <= now)
        .order_by(schedules.c.next_run_at)
        .limit(limit + 1),
    ]
    ids: list[str] = []
    for query in queries:
        if locked:
            query = query.with_for_update(skip_locked=True)
        ids.extend(conn.execute(query).scalars())
    return ids


def _load_rows(conn: sa.Connection, ids: list[str]) -> tuple[list[Any], list[tuple[str, str]]]:
    """Load full rows; a row whose stored values cannot even be decoded is reported, not raised.

    Another application may write a value the column type cannot read (bad JSON, say). One
    batched read serves the normal case; only if it fails is each row read alone, to find
    the broken ones.
    """
    query = sa.select(schedules).where(schedules.c.id.in_(ids))
    try:
        return list(conn.execute(query)), []
    except (ValueError, TypeError, sa.exc.StatementError) as exc:
        logger.warning("a due schedule row cannot be decoded (%s); reading rows one by one", exc)
    rows, broken = [], []
    for schedule_id in ids:
        try:
            rows.append(conn.execute(query.where(schedules.c.id == schedule_id)).one())
        except (ValueError, TypeError, sa.exc.StatementError) as exc:
            broken.append((schedule_id, f"row cannot be decoded: {exc}"))
    return rows, broken


def _billing_accounts(conn: sa.Connection, grant_ids: Iterable[str]) -> dict[str, str]:
    ids = sorted(grant_ids)
    if not ids:
        return {}
    query = sa.select(execution_grants.c.id, execution_grants.c.billing_account).where(
        execution_grants.c.id.in_(ids)
    )
    return {row.id: row.billing_account for row in conn.execute(query)}


@dataclass
class _Plan:
    slots: list[tuple[dt.datetime, bool]]
    next_run_at: dt.datetime | None
    fired: int
    last_fired: dt.datetime | None
    completed: bool


def _plan_schedule(row: Any, spec: ScheduleSpec, now: dt.datetime, limits: TickLimits) -> _Plan:
    """Which slots of one schedule are due, which of them fire, and the next ``next_run_at``."""
    cron = spec.cron_schedule()
    if cron is None:
        assert spec.run_at is not None
        if spec.run_at > now:
            return _Plan([], spec.run_at, 0, None, completed=False)
        fires = now - spec.run_at <= limits.catchup_window
        return _Plan(
            [(spec.run_at, fires)], None, int(fires), spec.run_at if fires else None, completed=True
        )
    # A stored next_run_at is a lower bound, not trusted to be a fire time: an application
    # may have written any value, or none.
    lower = row.next_run_at or row.created_at or now
    slots = cron.fires_between(lower, now, limit=limits.max_slots_per_schedule + 1)
    truncated = len(slots) > limits.max_slots_per_schedule
    slots = slots[: limits.max_slots_per_schedule]
    if not slots:
        return _Plan([], cron.next_after(max(lower, now)), 0, None, completed=False)
    latest = slots[-1]
    # When truncated, a later slot exists, so none of these is the latest: all are missed.
    latest_fires = not truncated and now - latest <= limits.catchup_window
    planned = [(slot, latest_fires and slot == latest) for slot in slots]
    return _Plan(
        planned,
        cron.next_after(latest),
        int(latest_fires),
        latest if latest_fires else None,
        completed=False,
    )


def _ledger_row(
    row: Any,
    spec: ScheduleSpec,
    slot: dt.datetime,
    fires: bool,
    now: dt.datetime,
    accounts: dict[str, str],
    limits: TickLimits,
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": new_id("run"),
        "idempotency_key": slot_key(row.id, slot),
        "schedule_id": row.id,
        "scheduled_for": slot,
        "graph_id": spec.graph_id,
        "owner": spec.owner,
        "grant_id": spec.grant_id,
        "billing_account": accounts.get(spec.grant_id),
        "input": spec.input,
        "max_cost_micros": row.max_cost_micros,
        "timeout_seconds": spec.timeout_seconds,
        "trigger_kind": "scheduled",
        "trigger_source": "graph_schedules_sensor",
        "trigger_ref": row.id,
        "requested_by": None,
        "status": PENDING if fires else MISSED,
        "created_at": now,
        "error_code": None,
        "error_message": None,
        "finished_at": None,
    }
    if not fires:
        late = int((now - slot).total_seconds())
        values["error_code"] = "missed"
        values["error_message"] = (
            f"due at {format_utc(slot)}, seen {late} s late; only the latest slot within the "
            f"{int(limits.catchup_window.total_seconds())} s catch-up window fires"
        )
        values["finished_at"] = now
    return values


def _mark_invalid(conn: sa.Connection, schedule_id: str, problem: str, now: dt.datetime) -> None:
    logger.error("schedule %s is invalid and will not fire until fixed: %s", schedule_id, problem)
    conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id)
        .values(status="error", last_error=problem[:2000], updated_at=now)
    )
    audit(
        conn,
        at=now,
        actor="graph_schedules_sensor",
        action="schedule.invalid",
        entity_type="schedule",
        entity_id=schedule_id,
        detail={"error": problem[:2000]},
    )


def pending_runs(conn: sa.Connection, limit: int) -> list[Any]:
    """Ledger rows that fire but may have no Dagster run yet, oldest first."""
    return list(
        conn.execute(
            sa.select(graph_runs)
            .where(graph_runs.c.status == PENDING)
            .order_by(graph_runs.c.created_at, graph_runs.c.scheduled_for)
            .limit(limit)
        )
    )


def mark_queued(conn: sa.Connection, run_ids_by_ledger_id: dict[str, str]) -> None:
    """Record the Dagster run that exists for each pending row."""
    if not run_ids_by_ledger_id:
        return
    conn.execute(
        graph_runs.update()
        .where(graph_runs.c.id == sa.bindparam("b_id"), graph_runs.c.status == PENDING)
        .values(status=QUEUED, dagster_run_id=sa.bindparam("b_run")),
        [{"b_id": k, "b_run": v} for k, v in run_ids_by_ledger_id.items()],
    )


def schedules_changed_since(conn: sa.Connection, since: dt.datetime) -> tuple[set[str], set[str]]:
    """Ids of schedules touched since ``since``: (those with a partition, deleted ones)."""
    query = sa.select(schedules.c.id, schedules.c.status).where(schedules.c.updated_at >= since)
    live: set[str] = set()
    deleted: set[str] = set()
    for row in conn.execute(query):
        (deleted if row.status == "deleted" else live).add(row.id)
    return live, deleted


def live_schedule_ids(conn: sa.Connection) -> set[str]:
    """Ids of every schedule that is not deleted: the partitions that should exist."""
    return set(
        conn.execute(sa.select(schedules.c.id).where(schedules.c.status != "deleted")).scalars()
    )


def next_due(conn: sa.Connection) -> tuple[str, dt.datetime] | None:
    """The active schedule that comes due first, for the sensor's skip reason."""
    row = conn.execute(
        sa.select(schedules.c.id, schedules.c.next_run_at)
        .where(ACTIVE_SCHEDULE, schedules.c.next_run_at.is_not(None))
        .order_by(schedules.c.next_run_at)
        .limit(1)
    ).one_or_none()
    return None if row is None else (row.id, row.next_run_at)
