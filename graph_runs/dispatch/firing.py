"""What happens at the instant a batch's slots come due: decide, then fire.

The sensor claims slots ahead of their instant, so that their dispatch run is up in time;
everything docs/how-a-slot-fires.md says is decided when a slot comes due is decided here, at that
instant, in one transaction for all the slots due at it:

- a slot whose schedule was paused or deleted meanwhile was cancelled by the pause, and a
  slot being cancelled (overlap cancel_other) ends ``cancelled``: neither fires;
- the overlap policy sees the schedule's runs as they are now, so a slot claimed 40 s ahead
  while the previous run was going fires if that run has ended;
- the billing account's budget, and the grant, are checked now.

A slot that a later dispatch attempt finds ``running`` (its run died after firing it) is
fired again without a new decision: the API already has its run, and the same idempotency
key and body resume it. One found ``cancelling`` with an API run is polled to its end, and
recorded cancelled with what it cost.
"""

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from graph_runs.access.grants import Grant, GrantDenied
from graph_runs.core.slot_plan import overlap_status
from graph_runs.core.statuses import (
    BUFFERED,
    CANCELLING,
    PENDING,
    QUEUED,
    RUNNING,
    SKIPPED_BUDGET,
)
from graph_runs.dispatch import batches, call_places
from graph_runs.dispatch.ledger import record_outcome, request_body
from graph_runs.execution_api.client import Outcome
from graph_runs.money.budgets import exhausted_accounts
from graph_runs.scheduling.in_flight import lock_schedules
from graph_runs.store import slot_status
from graph_runs.store.db import database_now
from graph_runs.store.tables import execution_grants, run_ledger, schedules

_CHUNK = 1_000


@dataclass(frozen=True)
class Firing:
    """A slot to call the API for: its row (as fired) and the request body."""

    row: Any
    body: dict[str, Any]


@dataclass
class Decided:
    """What the instant decided for a group of slots."""

    firing: list[Firing] = field(default_factory=list)
    # Slots that did not fire, by the status they got (cancelled, skipped_overlap, ...).
    held: Counter[str] = field(default_factory=Counter)
    # Slots whose grant refused them: (row, code, message); recorded failed already.
    denied: list[tuple[Any, str, str]] = field(default_factory=list)
    # The run no longer holds the batch's lease: nothing was decided, nothing fired.
    fenced: bool = False
    # The database's clock says the instant is this many seconds away (the worker's clock
    # runs ahead): nothing was decided; ask again then.
    early_by: float = 0.0
    # Fired slots that hold their account's call place (call_places): they call at once;
    # the others of ``firing`` wait for one.
    placed: set[str] = field(default_factory=set)


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    return [list(ids[i : i + _CHUNK]) for i in range(0, len(ids), _CHUNK)]


def _rows(conn: sa.Connection, ledger_ids: list[str], batch_id: str) -> list[Any]:
    """The rows still in ``batch_id``, as they are now.

    A slot cancelled and then backfilled since the batch was loaded has left it for a batch
    of its own, which fires it.
    """
    rows: list[Any] = []
    for chunk in _chunks(ledger_ids):
        rows.extend(
            conn.execute(
                sa.select(run_ledger).where(
                    run_ledger.c.id.in_(chunk), run_ledger.c.batch_id == batch_id
                )
            )
        )
    return sorted(rows, key=lambda r: (r.due_at or r.created_at, r.scheduled_for or r.created_at))


def _busy(
    conn: sa.Connection, schedule_ids: list[str], excluding: set[str]
) -> tuple[Counter[str], Counter[str], dict[str, dt.datetime]]:
    """Other runs of these schedules going now, and slots waiting buffered, per schedule.

    Also the slot of each schedule's oldest buffered row, which runs before any newer slot.
    """
    active: Counter[str] = Counter()
    buffered: Counter[str] = Counter()
    oldest_buffered: dict[str, dt.datetime] = {}
    for chunk in _chunks(sorted(schedule_ids)):
        query = sa.select(
            run_ledger.c.id,
            run_ledger.c.schedule_id,
            run_ledger.c.status,
            sa.func.coalesce(run_ledger.c.scheduled_for, run_ledger.c.created_at).label("slot"),
        ).where(
            run_ledger.c.schedule_id.in_(chunk),
            run_ledger.c.status.in_([QUEUED, RUNNING, CANCELLING, BUFFERED]),
        )
        for row in conn.execute(query):
            if row.id in excluding:
                continue
            if row.status != BUFFERED:
                active[row.schedule_id] += 1
                continue
            buffered[row.schedule_id] += 1
            first = oldest_buffered.get(row.schedule_id)
            oldest_buffered[row.schedule_id] = row.slot if first is None else min(first, row.slot)
    return active, buffered, oldest_buffered


def _grants(conn: sa.Connection, grant_ids: set[str]) -> dict[str, Grant]:
    found: dict[str, Grant] = {}
    for chunk in _chunks(sorted(grant_ids)):
        query = sa.select(execution_grants).where(execution_grants.c.id.in_(chunk))
        found.update({row.id: Grant.from_row(row) for row in conn.execute(query)})
    return found


# How far the database's clock may be behind an instant when it fires (its resolution, and
# the moment between the worker's wake and its read).
CLOCK_TOLERANCE_SECONDS = 0.01


def decide_and_fire(
    conn: sa.Connection,
    ledger_ids: list[str],
    *,
    batch_id: str,
    dagster_run_id: str,
    attempt: int,
    now: dt.datetime,
    on_own_clock: bool = False,
    max_calls_per_account: int | None = None,
    room: int | None = None,
) -> Decided:
    """Decide, at ``now``, which of these slots fire; mark those ``running`` and return them.

    Run in one transaction. Rows are re-read here, so whatever a pause, a cancellation or
    another run did to them since the batch was loaded is seen. Fenced: unless
    ``dagster_run_id`` holds the batch's lease for ``attempt`` (``batches.holds_lease``),
    nothing is decided or fired, and the result says ``fenced``. Unless ``on_own_clock``,
    nothing fires before the database's clock reaches the slots' instant either: the result
    then says how early it is (``early_by``). With ``max_calls_per_account``, the slots fired
    take their accounts' free call places, earliest due first (``placed``), at most
    ``room`` of them (the calls the run can make at once).
    """
    if not batches.holds_lease(conn, batch_id, attempt, dagster_run_id=dagster_run_id, now=now):
        return Decided(fenced=True)
    rows = _rows(conn, ledger_ids, batch_id)
    # The worker slept until the instant by its own clock; a clock a few seconds ahead
    # would fire early. The database's clock, which every worker shares, has the last word.
    due = max((r.due_at for r in rows if r.due_at is not None), default=None)
    if due is not None and not on_own_clock:
        early = (due - database_now(conn)).total_seconds()
        if early > CLOCK_TOLERANCE_SECONDS:
            return Decided(early_by=early)
    schedule_rows = lock_schedules(conn, [r.schedule_id for r in rows if r.schedule_id])
    rows = _rows(conn, ledger_ids, batch_id)  # again, now that their schedules are locked
    decided = Decided()
    # Slots fired for the first time by the sensor's claim get the instant's decision; a
    # trigger-now or backfill was decided by its own overlap option when it was asked for.
    fresh = [
        r
        for r in rows
        if r.status == PENDING
        and r.trigger_kind == "scheduled"
        and r.schedule_id in schedule_rows
        and not r.dispatch_attempts
    ]
    over_budget = exhausted_accounts(
        conn, sorted({r.billing_account for r in fresh if r.billing_account}), now
    )
    active, buffered, oldest_buffered = _busy(
        conn, sorted({r.schedule_id for r in fresh}), excluding={r.id for r in rows}
    )
    cancel_others: set[str] = set()
    held: dict[str, str] = {}
    for row in fresh:
        block = over_budget.get(row.billing_account or "")
        if block is not None:
            slot_status.decide_at_instant(conn, row, SKIPPED_BUDGET, reason=block, now=now)
            held[row.id] = SKIPPED_BUDGET
            decided.held[SKIPPED_BUDGET] += 1
            continue
        policy = schedule_rows[row.schedule_id].overlap
        # A slot buffered before this one runs before it: while one waits to be released
        # the schedule is busy, so a newer slot never overtakes it.
        ahead = oldest_buffered.get(row.schedule_id)
        waiting = ahead is not None and ahead < (row.scheduled_for or row.created_at)
        status, reason = overlap_status(
            policy, active[row.schedule_id] > 0 or waiting, buffered[row.schedule_id]
        )
        if status != PENDING:
            slot_status.decide_at_instant(conn, row, status, reason=reason or "", now=now)
            held[row.id] = status
            decided.held[status] += 1
            if status == BUFFERED:
                buffered[row.schedule_id] += 1
                oldest_buffered.setdefault(row.schedule_id, row.scheduled_for or row.created_at)
            continue
        if policy == "cancel_other" and active[row.schedule_id]:
            cancel_others.add(row.schedule_id)
        active[row.schedule_id] += 1
    # A buffered slot still runs later; a skipped one is no run of its schedule.
    _uncount_held(conn, [r for r in fresh if held.get(r.id, BUFFERED) != BUFFERED], now)
    for schedule_id in sorted(cancel_others):
        slot_status.request_cancel(
            conn,
            schedule_id,
            [QUEUED, RUNNING],
            code="cancelled_by_overlap",
            message="a newer slot came due while this run was in flight (overlap cancel_other)",
        )
    to_fire = [r for r in rows if r.id not in held and r.status in (PENDING, RUNNING)]
    # A slot asked to stop after it was fired: the decision to fire came first, and its
    # request may be at the API whether or not its run id came back. It is resumed under its
    # key (the API answers with the run it has), polled to its end and recorded cancelled,
    # with what it cost. One never fired ends cancelled now.
    polled = [r for r in rows if r.status == CANCELLING and r.started_at is not None]
    stopped = [r.id for r in rows if r.status == CANCELLING and r.started_at is None]
    if stopped:
        decided.held["cancelled"] += len(stopped)
    grants = _grants(conn, {r.grant_id for r in to_fire + polled})
    ready: list[tuple[Any, Grant | None]] = []
    for row in to_fire:
        grant = grants.get(row.grant_id)
        if row.status == PENDING:
            # Checked before the first call only: a resumed slot's API run already exists.
            try:
                if grant is None:
                    raise GrantDenied("grant_missing", f"grant {row.grant_id} does not exist")
                grant.check(row.graph_id, now, owner=row.owner)
            except GrantDenied as denied:
                decided.denied.append((row, denied.code, denied.message))
                continue
        ready.append((row, grant))
    slot_status.fire(
        conn,
        stopped + [r.id for r, _ in ready],
        dagster_run_id=dagster_run_id,
        attempt=attempt,
        now=now,
    )
    for row, code, message in decided.denied:
        record_outcome(
            conn,
            row.id,
            Outcome(status="failed", error_code=code, error_message=message),
            dagster_run_id=dagster_run_id,
            now=now,
        )
    decided.firing = [
        Firing(row, request_body(row, grant.connection_ids if grant else []))
        for row, grant in ready + [(r, grants.get(r.grant_id)) for r in polled]
    ]
    calling = [f.row.id for f in decided.firing]
    if max_calls_per_account is None:
        decided.placed = set(calling)
    else:
        # Last in the transaction: the accounts' locks wait on no one (call_places).
        decided.placed = call_places.take(
            conn, calling, dagster_run_id=None, cap=max_calls_per_account, now=now, room=room
        ).placed
    return decided


def _uncount_held(conn: sa.Connection, rows: list[Any], now: dt.datetime) -> None:
    """The claim counted a slot claimed ahead as a run; one that did not fire is not one.

    A claim that counted the schedule's last run under ``max_runs`` also completed it: the
    slot held at its instant gives the run back, so a cron schedule below its bound again is
    active, with no next due time, and the next tick plans its next slot from its cursor.
    """
    skipped = Counter(r.schedule_id for r in rows)
    for schedule_id, count in sorted(skipped.items()):
        conn.execute(
            schedules.update()
            .where(schedules.c.id == schedule_id)
            .values(runs_total=schedules.c.runs_total - count, updated_at=now)
        )
    if skipped:
        conn.execute(
            schedules.update()
            .where(
                schedules.c.id.in_(sorted(skipped)),
                schedules.c.status == "completed",
                schedules.c.cron.is_not(None),
                schedules.c.max_runs.is_not(None),
                schedules.c.runs_total < schedules.c.max_runs,
                sa.or_(schedules.c.end_at.is_(None), schedules.c.end_at > now),
            )
            .values(status="active", next_run_at=None, updated_at=now)
        )
