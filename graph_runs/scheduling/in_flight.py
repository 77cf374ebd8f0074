"""A schedule's runs that may still start or are going: counted, cancelled, released.

The overlap policy looks at these rows, pausing and deleting cancel them, and a buffered
slot is released when nothing else of its schedule is in flight. All queries read the
partial index ``ix_graph_runs_in_flight``, so their cost follows the runs in flight, not
the ledger's size.
"""

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from graph_runs.approvals.gate import cancel_awaiting
from graph_runs.core.statuses import BUFFERED, CANCELLING, PENDING, QUEUED, RUNNING
from graph_runs.store import slot_status
from graph_runs.store.tables import IN_FLIGHT_RUN, run_ledger, schedules


@dataclass(frozen=True)
class InFlight:
    """How many of a schedule's runs are going (or about to), and how many wait buffered."""

    active: int = 0
    buffered: int = 0


def lock_schedules(conn: sa.Connection, schedule_ids: Iterable[str]) -> dict[str, Any]:
    """The schedules' rows, locked in id order on Postgres, before their runs are counted.

    Whoever decides a run's overlap status (the claim, a trigger, a backfill, a release of a
    buffered slot, the instant a slot fires) holds its schedule's row until it commits, so two
    of them never both see "nothing in flight". Always schedule first, then ledger, in id
    order: no two lockers wait on each other. SQLite takes the database's one write lock at
    ``BEGIN IMMEDIATE`` instead.
    """
    ids = sorted(set(schedule_ids))
    found: dict[str, Any] = {}
    for start in range(0, len(ids), 1000):
        query = (
            sa.select(schedules.c.id, schedules.c.overlap)
            .where(schedules.c.id.in_(ids[start : start + 1000]))
            .order_by(schedules.c.id)
        )
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        found.update({row.id: row for row in conn.execute(query)})
    return found


def in_flight_counts(conn: sa.Connection, schedule_ids: Iterable[str]) -> dict[str, InFlight]:
    """In-flight counts for many schedules in one query."""
    ids = sorted(set(schedule_ids))
    counts: dict[str, InFlight] = {}
    for start in range(0, len(ids), 1000):
        query = (
            sa.select(run_ledger.c.schedule_id, run_ledger.c.status, sa.func.count())
            .where(IN_FLIGHT_RUN, run_ledger.c.schedule_id.in_(ids[start : start + 1000]))
            .group_by(run_ledger.c.schedule_id, run_ledger.c.status)
        )
        for schedule_id, status, count in conn.execute(query):
            current = counts.get(schedule_id, InFlight())
            if status == BUFFERED:
                counts[schedule_id] = InFlight(current.active, current.buffered + count)
            else:
                counts[schedule_id] = InFlight(current.active + count, current.buffered)
    return counts


@dataclass(frozen=True)
class Cancelled:
    """What cancelling a schedule's runs did."""

    never_started: int = 0  # pending, buffered or awaiting approval: no run will do anything
    cancelling: int = 0  # queued (or running, when terminating): the sensor stops their run


def cancel_in_flight(
    conn: sa.Connection,
    schedule_id: str,
    *,
    now: dt.datetime,
    code: str,
    message: str,
    terminate: bool,
) -> Cancelled:
    """Cancel a schedule's runs that have not started; with ``terminate``, running ones too.

    Rows without a Dagster run end here. Rows with one become ``cancelling``: the op checks
    its row when it starts and does nothing for such a row, and the sensor cancels the
    queued Dagster run (or terminates the running one) on its next tick.
    """
    never_started = slot_status.cancel_unstarted(
        conn, schedule_id, code=code, message=message, now=now
    )
    never_started += cancel_awaiting(conn, schedule_id, now=now, code=code, message=message)
    stopping = [QUEUED, RUNNING] if terminate else [QUEUED]
    cancelling = slot_status.request_cancel(conn, schedule_id, stopping, code=code, message=message)
    return Cancelled(never_started=never_started, cancelling=cancelling)


def unclaim_ahead(conn: sa.Connection, schedule_id: str, *, now: dt.datetime) -> int:
    """Undo the claim of the schedule's slots whose instant has not come; returns how many.

    The sensor claims a slot up to a minute ahead of its instant, and counts it a run. A
    pause, a resume or an edit before the instant must find the schedule as if the slot
    had not been claimed: paused at the instant it is recorded ``skipped_paused`` by the
    resume, resumed in time it fires, edited it fires as edited. So the rows go, and the
    schedule's cursor, next due time and run count move back to before the first of them
    (a schedule the claim completed, ``max_runs`` or a one-time slot, is active again).
    """
    rows = list(
        conn.execute(
            sa.select(run_ledger.c.id, run_ledger.c.scheduled_for, run_ledger.c.due_at).where(
                IN_FLIGHT_RUN,
                run_ledger.c.schedule_id == schedule_id,
                run_ledger.c.status == PENDING,
                run_ledger.c.trigger_kind == "scheduled",
                sa.func.coalesce(run_ledger.c.dispatch_attempts, 0) == 0,
                run_ledger.c.due_at > now,
            )
        )
    )
    if not rows:
        return 0
    taken = slot_status.unclaim(conn, [row.id for row in rows])
    first = min(rows, key=lambda r: r.scheduled_for)
    schedule = conn.execute(
        sa.select(schedules.c.cron, schedules.c.status).where(schedules.c.id == schedule_id)
    ).one()
    conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id)
        .values(
            runs_total=schedules.c.runs_total - taken,
            next_run_at=first.due_at,
            # Slots strictly after the cursor are unclaimed; a one-time slot has none.
            slot_cursor=(
                first.scheduled_for - dt.timedelta(microseconds=1) if schedule.cron else None
            ),
            status="active" if schedule.status == "completed" else schedule.status,
            updated_at=now,
        )
    )
    return taken


def release_buffered(conn: sa.Connection, now: dt.datetime) -> list[str]:
    """Turn each schedule's oldest buffered slot into a pending one once nothing else runs.

    "Runs" is a row queued, running or being cancelled, or a pending one already due: a
    slot claimed ahead of its instant is not going yet, and must not hold back the slot
    buffered before it (which would then fire after it). Returns the ledger ids released;
    the sensor emits their runs in the same tick.
    """
    buffered = list(
        conn.execute(
            sa.select(run_ledger.c.id, run_ledger.c.schedule_id)
            .where(IN_FLIGHT_RUN, run_ledger.c.status == BUFFERED)
            .order_by(run_ledger.c.scheduled_for)
        )
    )
    if not buffered:
        return []
    schedule_ids = sorted({row.schedule_id for row in buffered})
    lock_schedules(conn, schedule_ids)
    going: set[str] = set()
    for start in range(0, len(schedule_ids), 1000):
        going.update(
            conn.execute(
                sa.select(run_ledger.c.schedule_id)
                .where(
                    IN_FLIGHT_RUN,
                    run_ledger.c.schedule_id.in_(schedule_ids[start : start + 1000]),
                    sa.or_(
                        run_ledger.c.status.in_([QUEUED, RUNNING, CANCELLING]),
                        sa.and_(
                            run_ledger.c.status == PENDING,
                            sa.func.coalesce(run_ledger.c.due_at, run_ledger.c.created_at) <= now,
                        ),
                    ),
                )
                .distinct()
            ).scalars()
        )
    released: list[str] = []
    seen: set[str] = set()
    for row in buffered:
        if row.schedule_id in seen or row.schedule_id in going:
            continue
        seen.add(row.schedule_id)
        released.append(row.id)
    slot_status.release(conn, released)
    return released
