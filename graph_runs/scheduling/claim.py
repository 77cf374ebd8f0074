"""Turning due schedules into ledger rows: the database half of a sensor tick.

A tick has two steps, each its own transaction:

1. ``claim_due_slots`` writes every due slot into the ledger with the status its
   policies give it (``pending`` if it fires) and advances each schedule's
   ``next_run_at``, all in one transaction. The ledger's unique (schedule, slot) constraint
   makes a replayed claim harmless.
2. The sensor asks for a Dagster run for every ``pending`` row, whether claimed this tick or
   by a tick that died before Dagster created its runs. The run key is the slot's
   idempotency key, so asking twice creates one run.

Nothing here imports Dagster, so the tick's logic is tested at exact instants without it.
"""

import datetime as dt
import logging
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from graph_runs.approvals.gate import open_approvals
from graph_runs.core.errors import InvalidInput
from graph_runs.core.ledger_rows import slot_row
from graph_runs.core.schedule_spec import ScheduleLimits, cursor_of, spec_from_row
from graph_runs.core.slot_plan import ScheduleState, plan_slots
from graph_runs.core.statuses import AWAITING_APPROVAL, BUFFERED, FIRING, MISSED, PENDING
from graph_runs.core.text import bounded
from graph_runs.money.budgets import exhausted_accounts
from graph_runs.scheduling.in_flight import InFlight, cancel_in_flight, in_flight_counts
from graph_runs.store import slot_status
from graph_runs.store.tables import (
    ACTIVE_SCHEDULE,
    UTCDateTime,
    audit,
    execution_grants,
    run_ledger,
    schedules,
)

logger = logging.getLogger(__name__)

ON_TIME_TOLERANCE = dt.timedelta(seconds=15)
# What the claim counts as a run of its schedule: a slot that fires, or waits to.
FIRED = frozenset(FIRING | {AWAITING_APPROVAL})


@dataclass(frozen=True)
class TickLimits:
    """Bounds on one tick's work, so that evaluation stays far below Dagster's 60 s timeout."""

    # 10,000 schedules due at one instant are claimed in one tick, ahead of the instant.
    max_schedules: int = 10_000
    max_slots_per_schedule: int = 500
    # How late a slot may be seen and still count as on time under catch-up ``none``: the
    # sensor's interval (30 s by default) plus a tolerance for a tick that starts late.
    on_time_grace: dt.timedelta = dt.timedelta(seconds=30) + ON_TIME_TOLERANCE
    # How far ahead of its instant a slot is claimed, so that its dispatch run is up before
    # the instant: the sensor's interval plus the time a run takes to launch.
    lookahead: dt.timedelta = dt.timedelta(0)


@dataclass
class ClaimResult:
    """What one claim did, for the sensor's log and its skip reason."""

    schedules_seen: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    completed: list[str] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    cancelled_for_overlap: int = 0
    more_due: bool = False

    @property
    def fired(self) -> int:
        """Slots that fire now, once the running run ends, or once a human approves them."""
        return self.statuses[PENDING] + self.statuses[BUFFERED] + self.statuses[AWAITING_APPROVAL]

    @property
    def missed(self) -> int:
        """Slots recorded as missed."""
        return self.statuses[MISSED]


def claim_due_slots(
    conn: sa.Connection,
    *,
    now: dt.datetime,
    schedule_limits: ScheduleLimits,
    tick_limits: TickLimits = TickLimits(),
    schedule_ids: Collection[str] | None = None,
) -> ClaimResult:
    """Write every due slot into the ledger and advance ``next_run_at``, in ``conn``'s transaction.

    Due means enabled, active, and ``next_run_at`` at or before ``now``, or missing (a row
    that another application inserted; its first slot is computed from ``created_at``).
    Each slot's status comes from ``slot_plan.plan_slots``: catch-up, overlap, bounds.
    ``schedule_ids`` limits the claim to those schedules (a backfill brings its schedule up
    to date first).
    """
    result = ClaimResult()
    horizon = now + tick_limits.lookahead
    ids = _due_ids(conn, horizon, tick_limits.max_schedules, schedule_ids)
    result.more_due = len(ids) > tick_limits.max_schedules
    ids = ids[: tick_limits.max_schedules]
    if not ids:
        return result
    rows, broken = _load_rows(conn, ids)
    for schedule_id, problem in broken:
        _mark_invalid(conn, schedule_id, problem, now)
        result.invalid.append((schedule_id, problem))
    accounts = _billing_accounts(conn, {row.grant_id for row in rows})
    in_flight = in_flight_counts(conn, (row.id for row in rows))
    over_budget = exhausted_accounts(conn, accounts.values(), now)
    ledger_rows: list[dict[str, Any]] = []
    gated: list[tuple[dict[str, Any], Any]] = []
    updates: list[dict[str, Any]] = []
    for row in rows:
        result.schedules_seen += 1
        going = in_flight.get(row.id, InFlight())
        try:
            spec = spec_from_row(row, schedule_limits, now)
            plan = plan_slots(
                spec.cron_schedule(),
                spec.run_at,
                ScheduleState(
                    schedule_id=row.id,
                    policies=spec.policies(),
                    cursor=cursor_of(row, spec, now),
                    runs_so_far=row.runs_total,
                    in_flight=going.active,
                    buffered=going.buffered,
                    budget_block=over_budget.get(accounts.get(row.grant_id, "")),
                ),
                now=now,
                on_time_grace=tick_limits.on_time_grace,
                max_slots=tick_limits.max_slots_per_schedule,
                # A gated slot opens its approval when it comes due, not ahead of it.
                horizon=now if spec.requires_approval else horizon,
            )
        except InvalidInput as exc:
            _mark_invalid(conn, row.id, str(exc), now)
            result.invalid.append((row.id, str(exc)))
            continue
        except (ArithmeticError, ValueError, TypeError, OSError, RecursionError) as exc:
            # A value validation let through (another application's row, an edge of a
            # type) must cost this schedule its slots, never the tick every other one.
            problem = f"cannot be planned: {type(exc).__name__}: {bounded(exc, 300)}"
            _mark_invalid(conn, row.id, problem, now)
            result.invalid.append((row.id, problem))
            continue
        if plan.cancel_in_flight:
            cancelled = cancel_in_flight(
                conn,
                row.id,
                now=now,
                code="cancelled_by_overlap",
                message=(
                    "a newer slot came due while this run was in flight (overlap cancel_other)"
                ),
                terminate=True,
            )
            result.cancelled_for_overlap += cancelled.never_started + cancelled.cancelling
        for planned in plan.slots:
            status = planned.status
            if spec.requires_approval and status in FIRING:
                # A gated slot holds no run until a human approves it (graph_runs/approvals).
                status = AWAITING_APPROVAL
            result.statuses[status] += 1
            ledger_row = slot_row(
                row,
                planned.slot,
                status,
                now=now,
                billing_account=accounts.get(row.grant_id),
                reason=planned.reason,
                due_at=planned.due,
            )
            ledger_rows.append(ledger_row)
            if status == AWAITING_APPROVAL:
                gated.append((ledger_row, row))
        if plan.completed:
            result.completed.append(row.id)
        fired = plan.fired
        updates.append(
            {
                "b_id": row.id,
                "b_next": plan.next_run_at,
                "b_cursor": plan.cursor,
                "b_status": "completed" if plan.completed else "active",
                "b_fired": len(fired),
                "b_last": fired[-1].slot if fired else None,
                "b_now": now,
            }
        )
    if slot_status.insert_new(conn, ledger_rows) < len(ledger_rows):
        # A slot that already had a row (a backfill wrote it, say) was not claimed now: it
        # is no new run of its schedule, nor an approval to open.
        inserted = _inserted_ids(conn, [r["id"] for r in ledger_rows])
        _count_only_inserted(ledger_rows, inserted, updates)
        gated = [(r, s) for r, s in gated if r["id"] in inserted]
    open_approvals(conn, gated, now)
    _advance(conn, updates)
    return result


def _inserted_ids(conn: sa.Connection, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 1000):
        found.update(
            conn.execute(
                sa.select(run_ledger.c.id).where(run_ledger.c.id.in_(ids[start : start + 1000]))
            ).scalars()
        )
    return found


def _count_only_inserted(
    ledger_rows: list[dict[str, Any]], inserted: set[str], updates: list[dict[str, Any]]
) -> None:
    """Count as runs only the claimed slots whose rows went in (rare: after a conflict)."""
    fired: Counter[str] = Counter(
        r["schedule_id"] for r in ledger_rows if r["id"] in inserted and r["status"] in FIRED
    )
    for update in updates:
        update["b_fired"] = fired[update["b_id"]]


# One statement for every claimed schedule, its values passed as arrays: the driver sends an
# executemany as one statement per row, a fifth of a 1,000-slot tick, and a VALUES list is
# compiled anew for every length. The ANY(ids) lets the planner find the rows by primary
# key; joined to unnest() alone it hashed the whole table.
_ADVANCE_ON_POSTGRES = sa.text(
    """
    UPDATE schedules SET
        next_run_at = v.next_run_at,
        slot_cursor = v.slot_cursor,
        status = v.status,
        runs_total = schedules.runs_total + v.fired,
        last_run_at = coalesce(v.last_run_at, schedules.last_run_at),
        updated_at = :now
    FROM unnest(
        CAST(:ids AS text[]), CAST(:next_run_at AS timestamptz[]),
        CAST(:slot_cursor AS timestamptz[]), CAST(:status AS text[]),
        CAST(:fired AS integer[]), CAST(:last_run_at AS timestamptz[])
    ) AS v(id, next_run_at, slot_cursor, status, fired, last_run_at)
    WHERE schedules.id = v.id AND schedules.id = ANY(CAST(:ids AS text[]))
    """
)


def _advance(conn: sa.Connection, updates: list[dict[str, Any]]) -> None:
    """Move each claimed schedule past its claimed slots: next slot, cursor, counters."""
    if not updates:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(
            _ADVANCE_ON_POSTGRES,
            {
                "ids": [u["b_id"] for u in updates],
                "next_run_at": [u["b_next"] for u in updates],
                "slot_cursor": [u["b_cursor"] for u in updates],
                "status": [u["b_status"] for u in updates],
                "fired": [u["b_fired"] for u in updates],
                "last_run_at": [u["b_last"] for u in updates],
                "now": updates[0]["b_now"],
            },
        )
        return
    # SQLite is in-process: an executemany costs little there.
    conn.execute(
        schedules.update()
        .where(schedules.c.id == sa.bindparam("b_id"))
        .values(
            next_run_at=sa.bindparam("b_next"),
            slot_cursor=sa.bindparam("b_cursor", type_=UTCDateTime),
            status=sa.bindparam("b_status"),
            runs_total=schedules.c.runs_total + sa.bindparam("b_fired"),
            last_run_at=sa.func.coalesce(
                sa.bindparam("b_last", type_=UTCDateTime), schedules.c.last_run_at
            ),
            updated_at=sa.bindparam("b_now"),
        ),
        updates,
    )


def _due_ids(
    conn: sa.Connection,
    horizon: dt.datetime,
    limit: int,
    among: Collection[str] | None = None,
) -> list[str]:
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
        .where(ACTIVE_SCHEDULE, schedules.c.next_run_at <= horizon)
        .order_by(schedules.c.next_run_at)
        .limit(limit + 1),
    ]
    ids: list[str] = []
    for query in queries:
        if among is not None:
            query = query.where(schedules.c.id.in_(sorted(among)))
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
    except (ValueError, TypeError, RecursionError, sa.exc.StatementError) as exc:
        logger.warning("a due schedule row cannot be decoded (%s); reading rows one by one", exc)
    rows, broken = [], []
    for schedule_id in ids:
        try:
            rows.append(conn.execute(query.where(schedules.c.id == schedule_id)).one())
        except (ValueError, TypeError, RecursionError, sa.exc.StatementError) as exc:
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


def _mark_invalid(conn: sa.Connection, schedule_id: str, problem: str, now: dt.datetime) -> None:
    logger.error("schedule %s is invalid and will not fire until fixed: %s", schedule_id, problem)
    conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id)
        .values(status="error", last_error=bounded(problem), updated_at=now)
    )
    audit(
        conn,
        at=now,
        actor="graph_schedules_sensor",
        action="schedule.invalid",
        entity_type="schedule",
        entity_id=schedule_id,
        detail={"error": bounded(problem)},
    )


def schedules_changed_since(conn: sa.Connection, since: dt.datetime) -> tuple[set[str], set[str]]:
    """Ids of schedules created or deleted since ``since``: (live ones, deleted ones).

    Reads the ``updated_at`` index range and filters there, so a tick that claimed (and so
    touched) 10,000 schedules gets back only the few whose partition is to be added or
    deleted.
    """
    query = sa.select(schedules.c.id, schedules.c.status).where(
        schedules.c.updated_at >= since,
        sa.or_(schedules.c.created_at >= since, schedules.c.deleted_at >= since),
    )
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
