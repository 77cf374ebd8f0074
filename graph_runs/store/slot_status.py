"""The one module that writes a ledger row's status: every allowed move, and nothing else.

``TRANSITIONS`` is the whole state machine of a slot (and of every other ledger row): each
allowed move from one status to another, with the functions here that make it. Every insert
into the ledger and every change of its ``status`` column goes through a function of this
module, and each checks its move against the table first, so that "how can a slot end up
``cancelled``?" is answered by reading one table (or the diagram in docs/how-a-slot-fires.md,
generated from it).

Moves of many rows at once (cancelling a schedule's runs, say) name their starting statuses
in the statement's WHERE clause, so a row that moved meanwhile is left as it is.
"""

import datetime as dt
from collections.abc import Collection, Mapping
from typing import Any

import sqlalchemy as sa

from graph_runs.core.statuses import (
    AWAITING_APPROVAL,
    BUFFERED,
    CANCELLED,
    CANCELLING,
    FAILED,
    FINAL,
    MISSED,
    NEVER_RAN,
    PENDING,
    QUEUED,
    REJECTED,
    RUNNING,
    SKIPPED_BUDGET,
    SKIPPED_OVERLAP,
    SKIPPED_PAUSED,
    SKIPPED_UNAPPROVED,
    SUCCEEDED,
)
from graph_runs.store.db import insert_ignoring_conflicts
from graph_runs.store.tables import IN_FLIGHT_RUN, run_ledger

# The status a row is inserted with is a move from ``NEW``.
NEW = None
# Ids per statement, well under any backend's bind-parameter limit.
_CHUNK = 1_000

# Who moves a ledger row from which statuses to which: (from, to, the functions here that do
# it). The state diagram in docs/how-a-slot-fires.md is generated from the table
# (``state_diagram``), and a test keeps the two equal.
_RULES: tuple[tuple[tuple[str | None, ...], tuple[str, ...], str], ...] = (
    # A slot comes due (the claim; resume's record of paused slots), or someone asks for a
    # run (trigger now, backfill; an ad-hoc or partition run from Dagster starts queued).
    (
        (NEW,),
        (
            PENDING,
            BUFFERED,
            QUEUED,
            AWAITING_APPROVAL,
            MISSED,
            SKIPPED_OVERLAP,
            SKIPPED_PAUSED,
            SKIPPED_BUDGET,
            CANCELLED,
        ),
        "insert_new",
    ),
    ((BUFFERED,), (PENDING,), "release"),
    ((AWAITING_APPROVAL,), (QUEUED,), "launch_approved"),
    # The op starts: a run launched before the sensor saw it, a re-execution, a restarted op.
    # A failed slot starts again only once refired; a failed trigger-now or ad-hoc run, when
    # its Dagster run is re-executed.
    ((PENDING, BUFFERED, QUEUED, RUNNING, FAILED, AWAITING_APPROVAL), (RUNNING,), "start"),
    ((CANCELLING,), (CANCELLED,), "start"),
    # A dispatch run fires its batch's slots at their instant (a later attempt resumes the
    # ones still running); a slot being cancelled ends there instead of firing.
    ((PENDING, RUNNING), (RUNNING,), "fire"),
    ((CANCELLING,), (CANCELLED,), "fire"),
    # What is decided at the instant a slot claimed ahead comes due: overlap and budget.
    ((PENDING,), (SKIPPED_OVERLAP, BUFFERED, SKIPPED_BUDGET), "decide_at_instant"),
    # Outcomes: the op's, or the reconciliation's when a Dagster run ended without one.
    # ``ledger.record_outcome`` called outside the ops may find the row not started yet.
    ((PENDING, QUEUED, RUNNING, CANCELLING), (SUCCEEDED, FAILED), "settle_outcome"),
    ((QUEUED, RUNNING, CANCELLING), (CANCELLED,), "settle_outcome"),
    # A failed slot that is run again, or recorded again with another API run.
    ((FAILED,), (SUCCEEDED, FAILED), "settle_outcome"),
    # Pause, delete, overlap cancel_other; then the sensor stops the Dagster run.
    ((PENDING, BUFFERED), (CANCELLED,), "cancel_unstarted"),
    # A person cancelled a dispatch run: its slots not fired end here; fired ones are
    # polled to their end by the next attempt, and recorded cancelled with their usage.
    ((PENDING,), (CANCELLED,), "cancel_batch"),
    ((RUNNING,), (CANCELLING,), "cancel_batch"),
    ((QUEUED, RUNNING), (CANCELLING,), "request_cancel"),
    ((CANCELLING,), (CANCELLED,), "settle_cancelled"),
    # The approval gate: a rejection, a timeout, the budget at launch, a pause.
    (
        (AWAITING_APPROVAL,),
        (REJECTED, SKIPPED_UNAPPROVED, SKIPPED_BUDGET, CANCELLED),
        "settle_awaiting",
    ),
    # A backfill runs a slot that never ran, under its overlap policy.
    (tuple(sorted(NEVER_RAN)), (PENDING, BUFFERED, SKIPPED_OVERLAP), "refire"),
    # A person refires a failed slot (graph_runs/scheduling/refire.py); one its overlap
    # policy would skip stays failed.
    ((FAILED,), (PENDING, BUFFERED), "refire_failed"),
)


def _table() -> dict[tuple[str | None, str], tuple[str, ...]]:
    table: dict[tuple[str | None, str], tuple[str, ...]] = {}
    for sources, targets, how in _RULES:
        for edge in ((source, target) for source in sources for target in targets):
            table[edge] = (*table.get(edge, ()), how)
    return table


# (from, to) -> the functions that make the move.
TRANSITIONS: Mapping[tuple[str | None, str], tuple[str, ...]] = _table()


class IllegalTransition(RuntimeError):
    """A move of a ledger row's status that ``TRANSITIONS`` does not allow: a bug, not input."""

    def __init__(self, source: str | None, target: str, by: str, ledger_id: str | None = None):
        row = f"ledger row {ledger_id}" if ledger_id else "a ledger row"
        start = source or "new"
        how = TRANSITIONS.get((source, target))
        if how is None:
            allowed = sorted(t for (s, t) in TRANSITIONS if s == source) or ["nothing"]
            why = f"from {start} it may move to {', '.join(allowed)}"
        else:
            why = f"only {', '.join(how)} makes that move"
        super().__init__(f"{by}: {row} cannot move from {start} to {target} ({why})")
        self.source, self.target, self.by = source, target, by


def check(source: str | None, target: str, by: str, ledger_id: str | None = None) -> None:
    """Raise IllegalTransition unless the table lets ``by`` move a row ``source`` -> ``target``."""
    if by not in TRANSITIONS.get((source, target), ()):
        raise IllegalTransition(source, target, by, ledger_id)


def move(conn: sa.Connection, row: Any, target: str, *, by: str, **values: Any) -> bool:
    """Move one row, as read (``row.id``, ``row.status``), to ``target``, setting ``values``.

    ``by`` names the function of this module that makes the move; the table must list it for
    the move, or IllegalTransition is raised and nothing changes. Returns False, changing
    nothing, when the row's status changed since it was read.
    """
    check(row.status, target, by, row.id)
    return bool(
        conn.execute(
            run_ledger.update()
            .where(run_ledger.c.id == row.id, run_ledger.c.status == row.status)
            .values(status=target, **_placed(target), **_announced(target), **values)
        ).rowcount
    )


def _placed(target: str) -> dict[str, Any]:
    """A row leaving its call gives its account's call place back (dispatch/call_places.py).

    Only a row ``running`` or ``cancelling`` is in a call; every other move ends it.
    """
    return {} if target in (RUNNING, CANCELLING) else {"call_place_at": None}


def _announced(target: str) -> dict[str, Any]:
    """A row reaching an outcome is to be announced (graph_runs/jobs/slot_events.py).

    Every move sets it: a failed slot that moves on is announced again with its new outcome,
    and one that leaves its outcome (a backfill refiring it) is not news until it ends.
    """
    return {"announce_tick": 0 if target in FINAL else None}


def _move_rows(
    conn: sa.Connection,
    sources: Collection[str],
    target: str,
    by: str,
    *where: sa.ColumnElement[bool] | sa.TextClause,
    values: Mapping[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> int:
    """Move the rows matching ``where`` whose status is one of ``sources`` to ``target``."""
    for source in sources:
        check(source, target, by)
    # An executemany (``params``) cannot expand an IN list: each source is its own equality.
    status = (
        sa.or_(*(run_ledger.c.status == source for source in sorted(sources)))
        if params
        else run_ledger.c.status.in_(sorted(sources))
    )
    statement = (
        run_ledger.update()
        .where(status, *where)
        .values(status=target, **_placed(target), **_announced(target), **(values or {}))
    )
    return conn.execute(statement, params or None).rowcount


# -- named moves -------------------------------------------------------------------------


def insert_new(conn: sa.Connection, rows: list[dict[str, Any]]) -> int:
    """Insert new ledger rows, each in a status a row may start in; returns how many.

    A row whose idempotency key (or schedule and slot) exists is skipped, so a replayed
    claim or a repeated request is harmless.
    """
    for row in rows:
        check(NEW, row["status"], "insert_new", row.get("id"))
    return insert_ignoring_conflicts(
        conn, run_ledger, [{**row, **_announced(row["status"])} for row in rows]
    )


def launch_approved(conn: sa.Connection, run_ids_by_ledger_id: Mapping[str, str]) -> None:
    """Record each approved slot's launched run: ``awaiting_approval`` -> ``queued``."""
    if run_ids_by_ledger_id:
        _move_rows(
            conn,
            [AWAITING_APPROVAL],
            QUEUED,
            "launch_approved",
            run_ledger.c.id == sa.bindparam("b_id"),
            values={"dagster_run_id": sa.bindparam("b_run")},
            params=[{"b_id": k, "b_run": v} for k, v in run_ids_by_ledger_id.items()],
        )


def release(conn: sa.Connection, ledger_ids: list[str]) -> int:
    """Release buffered slots to fire: ``buffered`` -> ``pending``, in a batch of their own."""
    if not ledger_ids:
        return 0
    return _move_rows(
        conn,
        [BUFFERED],
        PENDING,
        "release",
        run_ledger.c.id.in_(ledger_ids),
        values={"batch_id": None},
    )


def assign_batch(conn: sa.Connection, assignments: Mapping[str, list[str]]) -> None:
    """Put claimed slots into their dispatch batches: {batch id: ledger ids}.

    Not a status move: a batched slot stays ``pending`` until it fires. One statement per
    batch (per thousand slots), not per slot: per-slot updates were half a 1,000-slot tick.
    """
    for batch_id, ids in assignments.items():
        _update_ids(
            conn,
            ids,
            run_ledger.c.status == PENDING,
            run_ledger.c.batch_id.is_(None),
            values={"batch_id": batch_id},
        )


def _update_ids(
    conn: sa.Connection,
    ledger_ids: list[str],
    *where: sa.ColumnElement[bool],
    values: Mapping[str, Any],
) -> None:
    """Set ``values`` on these rows (those matching ``where``), a thousand ids a statement."""
    for start in range(0, len(ledger_ids), _CHUNK):
        conn.execute(
            run_ledger.update()
            .where(run_ledger.c.id.in_(ledger_ids[start : start + _CHUNK]), *where)
            .values(**values)
        )


def fire(
    conn: sa.Connection,
    ledger_ids: list[str],
    *,
    dagster_run_id: str,
    attempt: int,
    now: dt.datetime,
) -> None:
    """A dispatch run fires slots at their instant: ``pending`` -> ``running``.

    A later attempt fires again the slots still ``running``; a slot being cancelled ends
    ``cancelled`` instead.
    """
    for start_at in range(0, len(ledger_ids), _CHUNK):
        chunk = run_ledger.c.id.in_(ledger_ids[start_at : start_at + _CHUNK])
        _move_rows(
            conn,
            [PENDING, RUNNING],
            RUNNING,
            "fire",
            chunk,
            values={
                "dagster_run_id": dagster_run_id,
                "dispatch_attempts": attempt,
                "started_at": sa.func.coalesce(run_ledger.c.started_at, now),
            },
        )
        _move_rows(
            conn,
            [CANCELLING],
            CANCELLED,
            "fire",
            chunk,
            values={"dagster_run_id": dagster_run_id, "finished_at": now},
        )


def unclaim(conn: sa.Connection, ledger_ids: list[str]) -> int:
    """Take back slots claimed ahead of their instant that never fired: the rows go.

    Not a status move but the claim undone: a pause or an edit before the instant leaves
    the slot as if it had never been claimed, so the schedule's cursor, moved back by the
    caller, claims it again (with the schedule as it is then) or records it paused. Only a
    ``pending`` row that no dispatch run has fired is taken; returns how many were.
    """
    taken = 0
    for start in range(0, len(ledger_ids), _CHUNK):
        taken += conn.execute(
            run_ledger.delete().where(
                run_ledger.c.id.in_(ledger_ids[start : start + _CHUNK]),
                run_ledger.c.status == PENDING,
                sa.func.coalesce(run_ledger.c.dispatch_attempts, 0) == 0,
            )
        ).rowcount
    return taken


def keep_api_run(
    conn: sa.Connection, ledger_id: str, api_run_id: str, *, resumed_at: dt.datetime | None = None
) -> None:
    """Remember the API run of a fired slot whose outcome is not known yet.

    Its poll timed out or failed; the next dispatch attempt resumes it. Not a status move.
    Its call has ended, so it gives its account's call place back. ``resumed_at``: the
    sensor's polls learnt the run by submitting under the key, and the API may have started
    it only then, so its timeout counts from that call (``called_at``).
    """
    resumed = {"called_at": resumed_at} if resumed_at is not None else {}
    conn.execute(
        run_ledger.update()
        .where(run_ledger.c.id == ledger_id, run_ledger.c.status.in_([RUNNING, CANCELLING]))
        .values(api_run_id=api_run_id, call_place_at=None, **resumed)
    )


def give_call_places(conn: sa.Connection, ledger_ids: list[str], *, now: dt.datetime) -> None:
    """Fired slots take their account's call places (dispatch/call_places.py): not a move.

    ``called_at`` keeps when the slot's first call began: its timeout runs from then. A row
    leaving ``running``/``cancelling`` gives its place back, and so does one handed off
    (it keeps the column, but a place is held only with no ``poll_after``).
    """
    _update_ids(
        conn,
        ledger_ids,
        run_ledger.c.status.in_([RUNNING, CANCELLING]),
        run_ledger.c.call_place_at.is_(None),
        values={"call_place_at": now, "called_at": sa.func.coalesce(run_ledger.c.called_at, now)},
    )


def give_back_call_places(
    conn: sa.Connection, ledger_ids: list[str], *, dagster_run_id: str
) -> None:
    """Slots whose call in ``dagster_run_id`` ended without an outcome give their places back.

    Not a move: they stay ``running``, and the next attempt resumes them, taking a place
    again. A slot fired since by another run holds that run's place, which stays.
    """
    _update_ids(
        conn,
        ledger_ids,
        run_ledger.c.dagster_run_id == dagster_run_id,
        values={"call_place_at": None},
    )


def hand_off(
    conn: sa.Connection, ledger_id: str, api_run_id: str | None, *, poll_after: dt.datetime
) -> bool:
    """Hand a fired slot's API run, still going, to the sensor's polls: not a status move.

    The row stays ``running`` (or ``cancelling``): its API run is, and overlap must see it.
    It leaves its batch's unfinished slots, so the batch can close and its dispatch run end,
    and gives its account's call place back (a place is held only with no ``poll_after``):
    the sensor's one poll a tick is not a call. Without ``api_run_id`` (a run that died
    before the API's answer came back), the polls learn it by submitting under the key.
    """
    known = {"api_run_id": api_run_id} if api_run_id else {}
    return bool(
        conn.execute(
            run_ledger.update()
            .where(run_ledger.c.id == ledger_id, run_ledger.c.status.in_([RUNNING, CANCELLING]))
            .values(poll_after=poll_after, **known)
        ).rowcount
    )


def next_poll(conn: sa.Connection, ledger_id: str, poll_after: dt.datetime) -> None:
    """A handed-off slot polled and still going: when to poll it again."""
    conn.execute(
        run_ledger.update()
        .where(
            run_ledger.c.id == ledger_id,
            run_ledger.c.status.in_([RUNNING, CANCELLING]),
            run_ledger.c.poll_after.is_not(None),
        )
        .values(poll_after=poll_after)
    )


def cancel_batch(
    conn: sa.Connection, batch_id: str, *, code: str, message: str, now: dt.datetime
) -> int:
    """A person cancelled the batch's dispatch run; returns how many rows moved.

    ``pending`` -> ``cancelled``; ``running`` -> ``cancelling``, whose API run is still
    polled to its end and recorded.
    """
    where = run_ledger.c.batch_id == batch_id
    values = {"error_code": code, "error_message": message}
    cancelled = _move_rows(
        conn, [PENDING], CANCELLED, "cancel_batch", where, values={**values, "finished_at": now}
    )
    return cancelled + _move_rows(conn, [RUNNING], CANCELLING, "cancel_batch", where, values=values)


def decide_at_instant(
    conn: sa.Connection, row: Any, target: str, *, reason: str, now: dt.datetime
) -> bool:
    """A slot claimed ahead does not fire after all (overlap, budget): -> ``target``."""
    final = target != BUFFERED
    return move(
        conn,
        row,
        target,
        by="decide_at_instant",
        error_code=target if final else None,
        error_message=reason if final else None,
        finished_at=now if final else None,
    )


def start(conn: sa.Connection, row: Any, *, dagster_run_id: str, now: dt.datetime) -> bool:
    """The op starts the row (as read, locked) in ``dagster_run_id``: -> ``running``.

    A row being cancelled ends ``cancelled`` instead: its run starts, and does nothing.
    """
    if row.status == CANCELLING:
        return move(
            conn, row, CANCELLED, by="start", dagster_run_id=dagster_run_id, finished_at=now
        )
    return move(
        conn,
        row,
        RUNNING,
        by="start",
        dagster_run_id=dagster_run_id,
        started_at=row.started_at or now,
    )


def settle_outcome(conn: sa.Connection, row: Any, status: str, **values: Any) -> bool:
    """Record a run's outcome on its row (as read, locked): -> ``status``, with ``values``.

    A settled row is no longer handed off: nothing polls it again.
    """
    return move(conn, row, status, by="settle_outcome", poll_after=None, **values)


def cancel_unstarted(
    conn: sa.Connection, schedule_id: str, *, code: str, message: str, now: dt.datetime
) -> int:
    """Rows of the schedule with no Dagster run: ``pending``, ``buffered`` -> ``cancelled``."""
    return _move_rows(
        conn,
        [PENDING, BUFFERED],
        CANCELLED,
        "cancel_unstarted",
        IN_FLIGHT_RUN,
        run_ledger.c.schedule_id == schedule_id,
        values={"error_code": code, "error_message": message, "finished_at": now},
    )


def request_cancel(
    conn: sa.Connection, schedule_id: str, sources: Collection[str], *, code: str, message: str
) -> int:
    """Ask the sensor to stop a schedule's runs: ``queued`` (or ``running``) -> ``cancelling``."""
    return _move_rows(
        conn,
        sources,
        CANCELLING,
        "request_cancel",
        IN_FLIGHT_RUN,
        run_ledger.c.schedule_id == schedule_id,
        values={"error_code": code, "error_message": message},
    )


def settle_cancelled(
    conn: sa.Connection, ledger_id: str, dagster_run_id: str, now: dt.datetime
) -> int:
    """A ``cancelling`` row whose Dagster run the sensor cancelled: -> ``cancelled``."""
    return _move_rows(
        conn,
        [CANCELLING],
        CANCELLED,
        "settle_cancelled",
        run_ledger.c.id == ledger_id,
        run_ledger.c.dagster_run_id == dagster_run_id,
        values={"finished_at": now},
    )


def settle_awaiting(
    conn: sa.Connection,
    ledger_ids: list[str],
    target: str,
    *,
    code: str,
    message: str,
    now: dt.datetime,
) -> int:
    """Give still-waiting gated slots their final status; a row settled meanwhile is kept."""
    if not ledger_ids:
        return 0
    return _move_rows(
        conn,
        [AWAITING_APPROVAL],
        target,
        "settle_awaiting",
        run_ledger.c.id.in_(ledger_ids),
        values={"error_code": code, "error_message": message, "finished_at": now},
    )


def refire(conn: sa.Connection, row: Any, target: str, **values: Any) -> bool:
    """A backfill takes a slot that never ran (as read) and fires, buffers or skips it."""
    return move(conn, row, target, by="refire", **values)


def refire_failed(conn: sa.Connection, row: Any, target: str, **values: Any) -> bool:
    """A person refires a failed slot (as read): it fires, or waits its turn, anew."""
    return move(conn, row, target, by="refire_failed", **values)


# -- the diagram -------------------------------------------------------------------------


def state_diagram() -> str:
    """The mermaid state diagram of docs/how-a-slot-fires.md, generated from ``TRANSITIONS``.

    The statuses of slots that never ran share their one way out (a backfill), so those
    moves are drawn once, from a node that names them all, to keep the diagram readable.
    """
    never_ran = sorted(NEVER_RAN)
    exits = {tuple(sorted(t for (s, t) in TRANSITIONS if s == status)) for status in never_ran}
    if len(exits) != 1:
        raise AssertionError("the never-ran statuses no longer share their moves out")
    lines = [
        "stateDiagram-v2",
        f'    state "never ran: {", ".join(never_ran)}" as never_ran',
    ]
    drawn: set[tuple[str, str]] = set()
    for (source, target), how in TRANSITIONS.items():
        node = "[*]" if source is None else "never_ran" if source in NEVER_RAN else source
        if (node, target) not in drawn:
            drawn.add((node, target))
            lines.append(f"    {node} --> {target} : {', '.join(how)}")
    return "\n".join(lines) + "\n"


# -- announcements (not status moves) ----------------------------------------------------


def clear_announced(conn: sa.Connection, up_to_tick: int) -> None:
    """The slot events sensor's ticks up to ``up_to_tick`` were committed: unmark their rows.

    Not a move: the rows keep their outcome and leave ``ix_graph_runs_to_announce``.
    """
    marked = run_ledger.c.announce_tick
    conn.execute(
        run_ledger.update()
        .where(marked.is_not(None), marked > 0, marked <= up_to_tick)
        .values(announce_tick=None)
    )


def mark_announced(conn: sa.Connection, ledger_ids: list[str], tick: int) -> None:
    """These rows' outcomes are announced by the slot events sensor's tick ``tick``."""
    _update_ids(conn, ledger_ids, values={"announce_tick": tick})
