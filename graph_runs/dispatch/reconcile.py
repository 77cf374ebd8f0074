"""Keeping in-flight ledger rows true to their Dagster runs.

The ops record every outcome they reach, but a Dagster run can end without reaching one:
its process dies, it is terminated, or the launch itself fails. Such a row would stay
``queued`` or ``running`` for ever, and under overlap ``skip`` block its schedule for ever.
Each sensor tick hands the Dagster statuses of the in-flight rows to
``apply_run_statuses``, which settles the rows whose run has ended and lists the runs that
are to be cancelled.
"""

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from graph_runs.core.statuses import CANCELLED, CANCELLING, FAILED, QUEUED, RUNNING
from graph_runs.dispatch.ledger import get_run, record_outcome
from graph_runs.execution_api.client import Outcome
from graph_runs.store import slot_status
from graph_runs.store.tables import IN_FLIGHT_RUN, dispatch_batches, run_ledger

# Dagster run statuses, as DagsterRunStatus values.
DAGSTER_ENDED = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
DAGSTER_STOPPING = "CANCELING"
# A run that has not started: cancelling it is a status change only.
DAGSTER_NOT_STARTED = frozenset({"QUEUED", "NOT_STARTED"})


@dataclass
class Reconciled:
    """What one reconciliation did, and the Dagster runs the sensor is to cancel."""

    failed: int = 0
    cancelled: int = 0
    # Fired before their run ended: their API runs are the sensor's to poll (polling.py).
    handed_off: int = 0
    # (ledger id, Dagster run id, Dagster status) of runs to cancel or terminate.
    to_cancel: list[tuple[str, str, str]] = field(default_factory=list)


def runs_to_reconcile(conn: sa.Connection, limit: int) -> list[Any]:
    """In-flight rows that have a Dagster run of their own, oldest first, in a fixed order."""
    return list(
        conn.execute(
            sa.select(
                run_ledger.c.id,
                run_ledger.c.status,
                run_ledger.c.dagster_run_id,
                run_ledger.c.schedule_id,
                run_ledger.c.started_at,
            )
            .where(
                IN_FLIGHT_RUN,
                run_ledger.c.status.in_([QUEUED, RUNNING, CANCELLING]),
                run_ledger.c.dagster_run_id.is_not(None),
                # Handed off: its dispatch run ended by design, and the sensor polls its API
                # run (graph_runs/dispatch/polling.py).
                run_ledger.c.poll_after.is_(None),
                # A batched slot's Dagster run fires many: its batch's lease recovers it. A
                # slot of a batch already done is in a run of its own, a re-execution of the
                # batch's run from the UI, which no lease covers.
                sa.or_(
                    run_ledger.c.batch_id.is_(None),
                    # Correlated, so each in-flight row is one primary-key look-up.
                    sa.exists().where(
                        dispatch_batches.c.id == run_ledger.c.batch_id,
                        dispatch_batches.c.status == "done",
                    ),
                ),
            )
            # Rows claimed in one tick share created_at: the slot and the id break the tie,
            # so that the schedule's last_error is its latest slot's, on any database.
            .order_by(run_ledger.c.created_at, run_ledger.c.scheduled_for, run_ledger.c.id)
            .limit(limit)
        )
    )


def apply_run_statuses(
    conn: sa.Connection,
    rows: list[Any],
    dagster_status: dict[str, str],
    *,
    now: dt.datetime,
) -> Reconciled:
    """Settle rows whose Dagster run ended without recording an outcome.

    ``dagster_status`` maps run ids to their Dagster status; a run it lacks no longer
    exists. A row that changed since it was read (a re-execution took it over, say) is left
    alone. A failure settled here counts as one, so pause-after-failures sees it too.

    A row whose op started it (``started_at``) is not settled here: the API may have its
    run. It is handed to the sensor's polls (``handed_off``), which record what it did, or
    give it up once its bound has passed and a poll found nothing.

    A row being cancelled has its Dagster run cancelled (queued) or terminated (started),
    unless its op has started it (``started_at``): that run is making the slot's one call,
    and terminating it would leave the API run going, unpolled and unbilled. It is left to
    end: its outcome is recorded ``cancelled``, with what the API run cost.
    """
    done = Reconciled()
    for row in rows:
        status = dagster_status.get(row.dagster_run_id)
        if status is not None and status not in DAGSTER_ENDED:
            calling = row.started_at is not None and status not in DAGSTER_NOT_STARTED
            if row.status == CANCELLING and status != DAGSTER_STOPPING and not calling:
                done.to_cancel.append((row.id, row.dagster_run_id, status))
            continue
        current = get_run(conn, row.id, lock=True)
        if (current.status, current.dagster_run_id) != (row.status, row.dagster_run_id):
            continue
        if current.started_at is not None:
            # Its run died after starting the slot's one call (an approved slot, a UI
            # partition run): the API may have that run, and be spending. Nothing retries a
            # run of one slot, so the sensor's polls resume it under its key, to its end;
            # one past its bound is polled once before it is given up.
            slot_status.hand_off(conn, row.id, current.api_run_id, poll_after=now)
            done.handed_off += 1
            continue
        if row.status == CANCELLING or status == "CANCELED":
            outcome = Outcome(
                status=CANCELLED,
                error_code=current.error_code or "dagster_run_canceled",
                error_message=current.error_message or "the Dagster run was canceled",
            )
            done.cancelled += 1
        else:
            what = "no longer exists" if status is None else f"ended {status}"
            outcome = Outcome(
                status=FAILED,
                error_code="dagster_run_lost" if status is None else "dagster_run_failed",
                error_message=(
                    f"Dagster run {row.dagster_run_id} {what} before recording an outcome"
                ),
            )
            done.failed += 1
        record_outcome(conn, row.id, outcome, dagster_run_id=row.dagster_run_id, now=now)
    return done
