"""What must hold, whatever the seed: each a function of the database, the API and history.

Each returns the violations it finds, one readable line each; an empty list is a pass.
"""

import datetime as dt
from collections import Counter
from typing import Any

import sqlalchemy as sa

from graph_runs.approvals.decisions import APPROVED
from graph_runs.core.statuses import AWAITING_APPROVAL, BUFFERED, FINAL, IN_FLIGHT, SUCCEEDED
from graph_runs.dispatch import call_places
from graph_runs.dispatch.api_runs import give_up_at
from graph_runs.operations.drift import SETTLED_WITHOUT_THE_API
from graph_runs.store.tables import approvals as approvals_table
from graph_runs.store.tables import audit_log, charge_receipts, run_ledger, schedules
from tests.simulation.world import FaultyApi


def _ledger(conn: sa.Connection) -> list[Any]:
    return list(conn.execute(sa.select(run_ledger)))


def money(conn: sa.Connection, api: FaultyApi, *, final: bool) -> list[str]:
    """Executions, ledger rows and receipts agree; with ``final``, every run is billed."""
    found: list[str] = []
    rows = _ledger(conn)
    by_key = Counter(r.idempotency_key for r in rows)
    receipts = list(conn.execute(sa.select(charge_receipts)))
    per_row = Counter(r.graph_run_id for r in receipts)
    per_api_run = Counter(r.api_run_id for r in receipts)
    row_ids = {r.id for r in rows}
    for key, (_digest, api_run_id) in api.store.keys.items():
        if by_key[key] != 1:
            found.append(f"API execution {api_run_id} (key {key}) has {by_key[key]} ledger rows")
    for receipt in receipts:
        if receipt.api_run_id not in api.store.runs:
            found.append(f"receipt {receipt.id} bills API run {receipt.api_run_id}, never run")
        if receipt.graph_run_id not in row_ids:
            found.append(f"receipt {receipt.id} has no ledger row")
    found += [f"ledger row {i} has {n} receipts" for i, n in per_row.items() if n > 1]
    found += [f"API run {i} has {n} receipts" for i, n in per_api_run.items() if n > 1]
    if not final:
        return found
    for row in rows:
        if row.status in IN_FLIGHT:
            found.append(f"ledger row {row.id} ({row.trigger_kind}) is still {row.status}")
        if row.status == SUCCEEDED and per_row[row.id] != 1:
            found.append(f"succeeded row {row.id} has {per_row[row.id]} receipts")
    keyed = {r.idempotency_key: r for r in rows}
    for key, (_digest, api_run_id) in api.store.keys.items():
        status, _answer = api.store.view(api.store.runs[api_run_id])
        row = keyed.get(key)
        if (
            status == 200
            and row is not None
            and row.billing_account
            and not per_api_run[api_run_id]
            and not _given_up_in_time(row)
        ):
            found.append(
                f"API run {api_run_id} ended and was paid for, but ledger row {row.id} "
                f"({row.status} {row.error_code}) has no receipt"
            )
    return found


def _given_up_in_time(row: Any) -> bool:
    """A slot given up on by the rule: past its timeout and the margin, its API run id kept.

    Reconcile lists it (``api_run_unsettled``) for a person to look up at the API: the one
    case where a paid API run may lack its receipt. One given up sooner (review defect A3),
    or without its id, is a violation.
    """
    return (
        row.status in ("failed", "cancelled")
        and row.api_run_id is not None
        and row.error_code in SETTLED_WITHOUT_THE_API
        and row.finished_at is not None
        and row.started_at is not None
        and row.finished_at >= give_up_at(row)
    )


def counters(conn: sa.Connection) -> list[str]:
    """A schedule's succeeded and failed counts (what describe shows) equal its ledger's."""
    counts: Counter[tuple[str, str]] = Counter(
        (r.schedule_id, r.status) for r in _ledger(conn) if r.schedule_id
    )
    found = []
    for s in conn.execute(sa.select(schedules)):
        ledger = (counts[(s.id, "succeeded")], counts[(s.id, "failed")])
        if (s.runs_succeeded, s.runs_failed) != ledger:
            found.append(
                f"schedule {s.id} counts {s.runs_succeeded} succeeded, {s.runs_failed} failed; "
                f"its ledger {ledger[0]} and {ledger[1]}"
            )
    return found


def _cron_matches(cron: str, slot: dt.datetime) -> bool:
    step = 2 if cron.startswith("*/2") else 1
    return slot.second == 0 and slot.minute % step == 0


def _stopped_throughout(
    events: list[tuple[dt.datetime, str, Any]], start: dt.datetime, end: dt.datetime
) -> str | None:
    """``paused`` or ``deleted`` if the schedule was so from ``start`` to ``end``.

    A slot fired at some instant between its ``started_at`` (the run's clock, which the
    simulator keeps behind its own) and its request's arrival at the API (the simulator's
    clock): only a schedule stopped over that whole span was surely stopped when it fired.
    """
    paused = deleted = False
    for at, action, _detail in events:
        if at >= start:
            if at <= end and action == "schedule.resume":
                return None
            continue
        paused = {"schedule.pause": True, "schedule.resume": False}.get(action, paused)
        deleted = deleted or action == "schedule.delete"
    return "deleted" if deleted else "paused" if paused else None


def timing(
    conn: sa.Connection,
    api: FaultyApi,
    cron_history: dict[str, list[tuple[dt.datetime, str]]],
    now: dt.datetime,
) -> list[str]:
    """Nothing fired before its instant, nor while paused, deleted or retimed away.

    Manual and backfill runs are asked for, paused or not, and are not held to it.
    """
    history: dict[str, list[tuple[dt.datetime, str, Any]]] = {}
    for entry in conn.execute(
        sa.select(audit_log).where(audit_log.c.entity_type == "schedule").order_by(audit_log.c.id)
    ):
        history.setdefault(entry.entity_id, []).append((entry.at, entry.action, entry.detail))
    found: list[str] = []
    for row in _ledger(conn):
        if row.trigger_kind != "scheduled" or row.started_at is None:
            continue
        first = api.first_seen.get(row.idempotency_key)
        if first is not None and row.due_at is not None and first < row.due_at:
            found.append(
                f"slot {row.id} reached the API at {first}, before its instant {row.due_at}"
            )
        # A request still on its way has not fired yet: its span runs to now.
        stopped = _stopped_throughout(
            history.get(row.schedule_id, []), row.started_at, first or now
        )
        if stopped:
            found.append(
                f"slot {row.id} of schedule {row.schedule_id} fired at {row.started_at}, while "
                f"it was {stopped}"
            )
        crons = [c for at, c in cron_history.get(row.schedule_id, []) if at < row.due_at]
        if crons and not _cron_matches(crons[-1], row.scheduled_for):
            found.append(
                f"slot {row.id} fired for {row.scheduled_for}, no slot of its timing since "
                f"the retime ({crons[-1]!r})"
            )
    return found


class History:
    """What the checks saw before, for invariants over time; one per simulation."""

    def __init__(self) -> None:
        # Ledger row -> (batch, most dispatch attempts seen in it).
        self.attempts: dict[str, tuple[str | None, int]] = {}
        # Buffered ledger row -> when a check first saw it buffered.
        self.buffered_since: dict[str, dt.datetime] = {}


def attempts(conn: sa.Connection, history: History) -> list[str]:
    """A slot's dispatch attempts never go back within its batch.

    Only a fire fenced on the batch's current attempt sets them: a run that woke after its
    lease moved on and fired anyway (review defect A5) set its older attempt over a newer.
    """
    found = []
    for row in _ledger(conn):
        batch, most = history.attempts.get(row.id, (row.batch_id, 0))
        if batch == row.batch_id and row.dispatch_attempts < most:
            found.append(
                f"slot {row.id} was fired by attempt {most} of batch {batch}, then by "
                f"attempt {row.dispatch_attempts}"
            )
        kept = most if batch == row.batch_id else 0  # a backfill moves a slot to a new batch
        history.attempts[row.id] = (row.batch_id, max(row.dispatch_attempts, kept))
    return found


def buffering(conn: sa.Connection, history: History, now: dt.datetime) -> list[str]:
    """A buffered slot is never overtaken: no newer slot of its schedule starts while it waits.

    Review defect A2: the slot claimed ahead of the next instant fired while the buffered
    one waited behind it. ``started_at`` is the run's clock, which the simulator keeps
    behind its own: a late clock can hide an overtaking, never invent one.
    """
    rows = _ledger(conn)
    buffered = {r.id: r for r in rows if r.status == BUFFERED}
    for gone in set(history.buffered_since) - set(buffered):
        del history.buffered_since[gone]
    for ledger_id in buffered:
        history.buffered_since.setdefault(ledger_id, now)
    found = []
    for row in rows:
        if row.trigger_kind != "scheduled" or row.started_at is None:
            continue
        for waiting in buffered.values():
            if (
                waiting.schedule_id == row.schedule_id
                and waiting.scheduled_for < row.scheduled_for
                and row.started_at > history.buffered_since[waiting.id]
            ):
                found.append(
                    f"slot {row.id} ({row.scheduled_for}) started at {row.started_at}, while "
                    f"the older slot {waiting.id} ({waiting.scheduled_for}) waited buffered"
                )
    return found


def places(conn: sa.Connection, cap: int) -> list[str]:
    """No account holds more call places than its cap, over every run."""
    return [
        f"account {account} holds {n} call places, over its cap of {cap}"
        for account, n in call_places.over_cap(conn, cap).items()
    ]


def approvals(conn: sa.Connection, api: FaultyApi, *, final: bool) -> list[str]:
    """A gated slot reaches the API only once approved, and never before its decision.

    A rejection, an expiry under on-timeout skip, or a pause that cancelled the approval
    means the API never sees the slot's key. With ``final``, no slot waits for approval:
    the end's pause cancelled every one still waiting.
    """
    # A backfill over a gated slot that never ran runs it as the person's explicit request,
    # not gated (docs/approvals.md): the row's trigger kind says which it was.
    query = sa.select(run_ledger.c.id, run_ledger.c.idempotency_key).where(
        run_ledger.c.trigger_kind == "scheduled"
    )
    keys = {row.id: row.idempotency_key for row in conn.execute(query)}
    found = []
    for approval in conn.execute(sa.select(approvals_table)):
        first = api.first_seen.get(keys.get(approval.graph_run_id, ""))
        if first is None:
            continue
        if approval.status != APPROVED:
            found.append(
                f"slot {approval.graph_run_id} reached the API at {first}, but its approval "
                f"{approval.id} is {approval.status}"
            )
        elif approval.decided_at is not None and first < approval.decided_at:
            found.append(
                f"slot {approval.graph_run_id} reached the API at {first}, before its "
                f"approval {approval.id} was decided at {approval.decided_at}"
            )
    if final:
        waiting = conn.execute(
            sa.select(run_ledger.c.id).where(run_ledger.c.status == AWAITING_APPROVAL)
        ).scalars()
        found += [f"slot {i} still awaits approval after the end's pause" for i in waiting]
    return found


def announced(conn: sa.Connection, taken: set[tuple[str, str]]) -> list[str]:
    """Every outcome a row ended in was taken by the slot events sensor at least once.

    Only its last outcome is checked: one it moved on from within a tick may be taken only
    as the next one, which is the outcome the partition must show.
    """
    rows = conn.execute(
        sa.select(run_ledger.c.id, run_ledger.c.status).where(run_ledger.c.status.in_(FINAL))
    ).all()
    return [
        f"outcome never announced: {row.id} {row.status}"
        for row in rows
        if (row.id, row.status) not in taken
    ]
