"""End to end: a real dagster-daemon takes a slot through human approval to a billed run.

The schedules sensor writes the pending approval, a person approves it through the Python
API, and graph_run_approvals_sensor (in the same daemon) launches the slot's run, which
calls the local execution API and writes its receipt.
"""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.approvals import decisions as approvals
from graph_runs.sensors.graph_run_approvals_sensor import APPROVAL_ID_TAG, APPROVED_BY_TAG
from graph_runs.store.tables import charge_receipts, run_ledger
from tests.conftest import RunningApi
from tests.e2e.conftest import Stack, slot_runs, wait_for
from tests.helpers import make_grant, make_schedule

pytestmark = pytest.mark.e2e


def test_daemon_runs_a_slot_only_after_it_is_approved(
    stack: Stack, engine: sa.Engine, execution_api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with engine.begin() as conn:
        grant = make_grant(conn, now - dt.timedelta(minutes=5))
        view = make_schedule(
            conn, now - dt.timedelta(minutes=5), grant, cron=None, run_at=now,
            requires_approval=True,
        )  # fmt: skip
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")

    def pending() -> list[dict]:
        with engine.connect() as conn:
            return approvals.list_approvals(conn, status="pending")

    wait_for(lambda: bool(pending()), stack, "the slot's pending approval")
    (approval,) = pending()
    assert approval["schedule_id"] == view["id"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(run_ledger.c.status)).scalar_one() == "awaiting_approval"
    assert execution_api.store.executions == 0
    with engine.begin() as conn:
        approvals.approve(
            conn, approval["id"], by="reviewer", note="e2e", now=dt.datetime.now(dt.UTC)
        )

    def finished() -> bool:
        with engine.connect() as conn:
            status = conn.execute(sa.select(run_ledger.c.status)).scalar_one()
        return status in ("succeeded", "failed")

    wait_for(finished, stack, "the approved run to finish")
    with engine.connect() as conn:
        row = conn.execute(sa.select(run_ledger)).one()
        receipt = conn.execute(sa.select(charge_receipts)).one()
    assert row.status == "succeeded", row.error_message
    assert (receipt.graph_run_id, receipt.api_run_id) == (row.id, row.api_run_id)
    assert execution_api.store.executions == 1
    with stack.instance(monkeypatch) as instance:
        run = instance.get_run_by_id(row.dagster_run_id)
        assert run is not None and run.job_name == "graph_run_job"
        assert run.tags[APPROVED_BY_TAG] == "reviewer"
        assert run.tags[APPROVAL_ID_TAG] == run.tags["dagster/run_key"] == approval["id"]
        assert run.tags["graph_runs/idempotency_key"] == row.idempotency_key
        wait_for(lambda: instance.get_run_by_id(run.run_id).is_finished, stack, "run end")  # type: ignore[union-attr]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
        assert len(slot_runs(instance)) == 1
