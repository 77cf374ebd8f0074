"""dispatch.reconcile and scheduling.in_flight: rows kept true to their Dagster runs.

Real SQLite and PostgreSQL databases; Dagster statuses are given as the sensor reads them.
"""

import sqlalchemy as sa

from graph_runs.dispatch import batches, ledger
from graph_runs.dispatch.reconcile import apply_run_statuses, runs_to_reconcile
from graph_runs.execution_api.client import Outcome
from graph_runs.scheduling.in_flight import release_buffered
from graph_runs.scheduling.schedules import get_schedule, pause_schedule
from graph_runs.store.tables import charge_receipts, dispatch_batches
from tests.graph_runs.dispatch.test_ledger import USAGE
from tests.helpers import at, claim_at, ledger_statuses, make_grant, make_schedule, set_run_status

CREATED = at("2026-11-22T10:00:30Z")
NOW = at("2026-11-22T10:10:00Z")


def test_runs_that_ended_without_an_outcome_are_settled(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(
            conn, CREATED, grant, overlap="allow_all", catchup="all", pause_after_failures=0
        )
        claim_at(conn, at("2026-11-22T10:04:05Z"))
        # Latest slot first: on Postgres an update moves a row, so the table's order is not
        # the slots' order, and the rows of one claim share created_at. The last error must
        # still be the latest slot's (10:03's), not whichever row a scan met last.
        set_run_status(conn, view["id"], "2026-11-22T10:04:00Z", "running", "run-going")
        set_run_status(conn, view["id"], "2026-11-22T10:03:00Z", "running", "run-gone")
        set_run_status(conn, view["id"], "2026-11-22T10:02:00Z", "running", "run-canceled")
        set_run_status(conn, view["id"], "2026-11-22T10:01:00Z", "queued", "run-failed")
        rows = runs_to_reconcile(conn, 100)
        done = apply_run_statuses(
            conn,
            rows,
            {"run-failed": "FAILURE", "run-canceled": "CANCELED", "run-going": "STARTED"},
            now=NOW,
        )
        assert (done.failed, done.cancelled, done.to_cancel) == (2, 1, [])
        assert [s for _, s in ledger_statuses(conn, view["id"])] == [
            "failed",
            "cancelled",
            "failed",
            "running",
        ]
        assert get_schedule(conn, view["id"])["runs_failed"] == 2
        assert "dagster_run_lost" in (get_schedule(conn, view["id"])["last_error"] or "")


def test_cancelling_rows_list_their_live_runs_for_the_sensor_to_cancel(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, overlap="allow_all", catchup="all")
        claim_at(conn, at("2026-11-22T10:02:05Z"))
        set_run_status(conn, view["id"], "2026-11-22T10:01:00Z", "queued", "run-q")
        set_run_status(conn, view["id"], "2026-11-22T10:02:00Z", "running", "run-r")
        pause_schedule(conn, view["id"], now=NOW, note=None, terminate=True)
        done = apply_run_statuses(
            conn, runs_to_reconcile(conn, 100), {"run-q": "QUEUED", "run-r": "STARTED"}, now=NOW
        )
        assert sorted(run for _, run, _ in done.to_cancel) == ["run-q", "run-r"]


def test_a_buffered_slot_is_released_when_the_running_run_ends(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, overlap="buffer_one")
        claim_at(conn, at("2026-11-22T10:01:05Z"))
        set_run_status(conn, view["id"], "2026-11-22T10:01:00Z", "running", "run-long")
        claim_at(conn, at("2026-11-22T10:02:05Z"))
        claim_at(conn, at("2026-11-22T10:03:05Z"))
        assert [s for _, s in ledger_statuses(conn, view["id"])] == [
            "running",
            "buffered",
            "skipped_overlap",
        ]
        assert release_buffered(conn, NOW) == []
        set_run_status(conn, view["id"], "2026-11-22T10:01:00Z", "succeeded", "run-long")
        (released,) = release_buffered(conn, NOW)
        assert [s for _, s in ledger_statuses(conn, view["id"])][1] == "pending"
        assert release_buffered(conn, NOW) == []
        assert released


def test_a_re_executed_slot_of_a_finished_batch_is_settled_when_its_run_ends(
    engine: sa.Engine,
) -> None:
    """Review defect A1: a UI re-execution of a dispatch run stranded its slot ``running``.

    The re-execution moved the batch's failed rows back to ``running`` inside a batch already
    done. When that run then ended without an outcome, nothing settled them: reconcile left
    batched rows to the lease, and the sensor looked only at open batches.
    """
    with engine.begin() as conn:
        view = make_schedule(conn, CREATED, make_grant(conn, CREATED))
        claim_at(conn, at("2026-11-22T10:01:05Z"))
        assert batches.form_batches(conn, now=NOW, horizon=NOW, batch_size=10)
        conn.execute(dispatch_batches.update().values(status="done"))
        set_run_status(conn, view["id"], "2026-11-22T10:01:00Z", "running", "re-execution")
        (row,) = runs_to_reconcile(conn, 100)
        assert row.dagster_run_id == "re-execution"
        done = apply_run_statuses(conn, [row], {"re-execution": "FAILURE"}, now=NOW)
        assert done.failed == 1
        assert ledger_statuses(conn, view["id"]) == [("2026-11-22T10:01:00Z", "failed")]


def test_a_started_run_in_its_call_is_not_terminated_and_what_it_cost_is_recorded(
    engine: sa.Engine,
) -> None:
    """``pause --terminate`` of a one-slot run whose op has started its call (issue 21 A4).

    The sensor terminated the run and settled the row ``cancelled``, with no API run id and
    no receipt, while the API ran the graph and charged for it.
    """
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, overlap="allow_all", catchup="all")
        claim_at(conn, at("2026-11-22T10:02:05Z"))
        set_run_status(conn, view["id"], "2026-11-22T10:01:00Z", "queued", "run-q")
        calling = set_run_status(conn, view["id"], "2026-11-22T10:02:00Z", "queued", "run-c")
        ledger.start_run(conn, calling, dagster_run_id="run-c", now=NOW)
        pause_schedule(conn, view["id"], now=NOW, note=None, terminate=True)
        done = apply_run_statuses(
            conn, runs_to_reconcile(conn, 100), {"run-q": "QUEUED", "run-c": "STARTED"}, now=NOW
        )
        assert [run for _, run, _ in done.to_cancel] == ["run-q"]
        # The op's call ends: the slot is cancelled, with its cost and its receipt.
        outcome = Outcome(status="succeeded", api_run_id="apirun_1", usage=USAGE)
        recorded = ledger.record_outcome(conn, calling, outcome, dagster_run_id="run-c", now=NOW)
        assert recorded["status"] == "cancelled"
        receipts = conn.execute(sa.select(charge_receipts.c.graph_run_id)).scalars().all()
        assert receipts == [calling]
