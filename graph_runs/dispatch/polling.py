"""Polling handed-off API runs: slots whose API run outlived the dispatch run that fired it.

A dispatch run polls its calls for ``GRAPH_RUNS_DISPATCH_HAND_OFF_SECONDS`` after its last
fire, then hands the API runs still going to the sensor (``poll_after`` set, the row still
``running``) and ends, so that one slow graph no longer keeps a dispatch run, and its place
in the run queue, for up to the slot's timeout. Each tick the sensor polls at most
``MAX_POLLS_PER_TICK`` of them whose ``poll_after`` has come, once each, within
``POLL_BUDGET_SECONDS`` in all:

- an API run that ended is recorded as the dispatch run would have recorded it (outcome,
  receipt, counters; ``cancelled`` with its usage if the slot was being cancelled);
- one still going (or a poll that failed) is polled again later, less often the longer it
  has run, from ``MIN_INTERVAL`` to ``MAX_INTERVAL``;
- one past its timeout and ``api_runs.GIVE_UP_MARGIN`` since it was fired is given up on
  once the API answers that its run has not ended (or that it has no such run), or, if the
  API cannot be asked, ``UNANSWERED_GRACE`` later: ``failed``, ``dispatch_lost``, its API
  run id kept (``reconcile`` lists such rows as ``api_run_unsettled``).

Resumable by API run id alone: a poll needs nothing of the run that fired the slot. A slot
whose run died before the API's answer came back (``reconcile`` hands such slots here) is
resumed under its idempotency key instead: submitted again with the body it was fired
with, the API answers with the run it has, and from then on it is polled by that id.
"""

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from graph_runs.core.statuses import CANCELLING, RUNNING
from graph_runs.dispatch.api_runs import GIVE_UP_MARGIN, api_may_still_run, give_up_at
from graph_runs.dispatch.batches import lost_outcome
from graph_runs.dispatch.ledger import record_outcome, request_body
from graph_runs.execution_api.concurrent_calls import Call, ConcurrentCaller, Result
from graph_runs.store import slot_status
from graph_runs.store.tables import execution_grants, run_ledger

logger = logging.getLogger(__name__)

MAX_POLLS_PER_TICK = 500
POLL_BUDGET_SECONDS = 15.0
MIN_INTERVAL = dt.timedelta(seconds=15)
# Past its bound, a slot is given up only once the API answered that its run had not
# ended (or that it has no such run), or, if it could not be asked, this much later.
UNANSWERED_GRACE = dt.timedelta(hours=1)
MAX_INTERVAL = dt.timedelta(minutes=5)
# Sent as the Dagster run of a poll the sensor makes (no run makes it).
POLLER = "graph_schedules_sensor"


@dataclass
class Polled:
    """What one tick's polls did."""

    ended: int = 0
    still_going: int = 0
    given_up: int = 0
    failed_to_record: int = 0


def due(conn: sa.Connection, now: dt.datetime, limit: int = MAX_POLLS_PER_TICK) -> list[Any]:
    """Handed-off slots whose next poll has come, longest waiting first (the partial index)."""
    return list(
        conn.execute(
            sa.select(run_ledger)
            .where(
                run_ledger.c.poll_after.is_not(None),
                run_ledger.c.poll_after <= now,
                run_ledger.c.status.in_([RUNNING, CANCELLING]),
            )
            .order_by(run_ledger.c.poll_after, run_ledger.c.id)
            .limit(limit)
        )
    )


def next_poll_at(row: Any, now: dt.datetime) -> dt.datetime:
    """When to poll again: after a tenth of how long the run has gone.

    Within MIN_INTERVAL and MAX_INTERVAL, and never after the instant it is given up at,
    when it is polled a last time.
    """
    gone = now - (row.started_at or now)
    return min(now + min(MAX_INTERVAL, max(MIN_INTERVAL, gone / 10)), give_up_at(row))


def _record_one(conn: sa.Connection, row: Any, result: Result, now: dt.datetime) -> str:
    if result.outcome is not None:
        record_outcome(conn, row.id, result.outcome, dagster_run_id=row.dagster_run_id, now=now)
        return "ended"
    learned = result.error.api_run_id if result.error is not None else None
    if learned and row.api_run_id is None:
        # Learnt by submitting under the key: the API may have started the run just now
        # (the first request never reached it), so it is not given up on this poll.
        slot_status.keep_api_run(conn, row.id, learned, resumed_at=now)
        slot_status.next_poll(conn, row.id, now + MIN_INTERVAL)
        return "still_going"
    # Not only accepted runs: one whose id is not known yet is resumed under its key.
    if api_may_still_run(row, now, accepted=False):
        slot_status.next_poll(conn, row.id, next_poll_at(row, now))
        return "still_going"
    if not result.answered and now < give_up_at(row) + UNANSWERED_GRACE:
        # Past its bound, but the API could not be asked (down, or this one request
        # failed): its run may have ended and been paid for. Asked again, for a while.
        slot_status.next_poll(conn, row.id, now + MIN_INTERVAL)
        return "still_going"
    margin = f"{GIVE_UP_MARGIN.total_seconds() / 60:.0f} minutes"
    given_up = (
        f"API run {row.api_run_id} did not end within the slot's timeout and {margin}; "
        "given up, its id kept to look it up at the API"
        if row.api_run_id
        else f"the API did not answer under the slot's key within its timeout and {margin}; "
        "given up"
    )
    outcome = lost_outcome(row, failed_message=given_up, cancelled_message=given_up)
    record_outcome(conn, row.id, outcome, dagster_run_id=row.dagster_run_id, now=now)
    return "given_up"


def _bodies(conn: sa.Connection, rows: list[Any]) -> dict[str, dict[str, Any]]:
    """The request bodies of slots to resume under their key: the body they were fired with.

    A grant's connections never change (a grant is only ever revoked), so the body is the
    first one again, and the API takes it for the same request.
    """
    grant_ids = sorted({row.grant_id for row in rows})
    connections = (
        {
            grant.id: list(grant.connection_ids)
            for grant in conn.execute(
                sa.select(execution_grants.c.id, execution_grants.c.connection_ids).where(
                    execution_grants.c.id.in_(grant_ids)
                )
            )
        }
        if grant_ids
        else {}
    )
    return {row.id: request_body(row, connections.get(row.grant_id, [])) for row in rows}


def record(engine: sa.Engine, rows: list[Any], results: list[Result], now: dt.datetime) -> Polled:
    """Write what the polls found, one short transaction per slot (one failure loses none)."""
    done = Polled()
    for row, result in zip(rows, results, strict=True):
        try:
            with engine.begin() as conn:
                what = _record_one(conn, row, result, now)
        except Exception as exc:  # noqa: BLE001 - polled again next tick, nothing lost
            logger.warning("could not record the poll of slot %s: %s", row.id, exc)
            done.failed_to_record += 1
            continue
        setattr(done, what, getattr(done, what) + 1)
    return done


async def poll_handed_off(
    engine: sa.Engine,
    caller: ConcurrentCaller,
    *,
    now: dt.datetime,
    limit: int = MAX_POLLS_PER_TICK,
    budget_seconds: float = POLL_BUDGET_SECONDS,
) -> Polled:
    """Poll every handed-off slot that is due, once; record what ended."""
    with engine.connect() as conn:
        rows = due(conn, now, limit)
        bodies = _bodies(conn, [row for row in rows if row.api_run_id is None])
    if not rows:
        return Polled()
    calls = [
        Call(
            idempotency_key=row.idempotency_key,
            graph_id=row.graph_id,
            body=bodies.get(row.id, {}),
            billing_account=row.billing_account,
            api_run_id=row.api_run_id,
        )
        for row in rows
    ]
    try:
        results = await asyncio.wait_for(
            caller.poll_once(calls, dagster_run_id=POLLER), budget_seconds
        )
    except TimeoutError:
        # The API is slow: nothing is known of these; each is polled again after its
        # interval, or given up on if its time is past.
        logger.warning("polls of %d handed-off slots took over %.0f s", len(rows), budget_seconds)
        results = [Result(call) for call in calls]
    return await asyncio.to_thread(record, engine, rows, results, now)
