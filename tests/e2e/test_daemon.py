"""End to end: a real dagster-daemon fires a schedule through the local execution API.

Touches everything: the sensor in a code server, the queued run coordinator, a run worker
process, the schedules database, and Dagster's storage (SQLite, or PostgreSQL from
dagster.postgres.yaml when the schedules database is PostgreSQL).
"""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.tables import charge_receipts, graph_runs, schedules
from tests.conftest import RunningApi
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import make_grant, make_schedule

pytestmark = pytest.mark.e2e


def test_daemon_fires_a_due_schedule_once_and_everything_agrees(
    stack: Stack, engine: sa.Engine, execution_api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with engine.begin() as conn:
        grant = make_grant(conn, now - dt.timedelta(minutes=5))
        view = make_schedule(conn, now - dt.timedelta(minutes=5), grant, cron=None, run_at=now)
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")

    def finished() -> bool:
        with engine.connect() as conn:
            status = conn.execute(sa.select(graph_runs.c.status)).scalar_one_or_none()
        return status in ("succeeded", "failed")

    wait_for(finished, stack, "the scheduled run to finish")
    with engine.connect() as conn:
        row = conn.execute(sa.select(graph_runs)).one()
        receipt = conn.execute(sa.select(charge_receipts)).one()
        schedule = conn.execute(sa.select(schedules)).one()
    assert row.status == "succeeded", row.error_message
    assert (receipt.graph_run_id, receipt.api_run_id) == (row.id, row.api_run_id)
    assert (schedule.status, schedule.runs_total, schedule.runs_succeeded) == ("completed", 1, 1)
    assert execution_api.store.executions == 1
    with stack.instance(monkeypatch) as instance:
        run = instance.get_run_by_id(row.dagster_run_id)
        assert run is not None and run.job_name == "graph_run_job"
        wait_for(lambda: instance.get_run_by_id(row.dagster_run_id).is_finished, stack, "run end")  # type: ignore[union-attr]
        assert instance.get_run_by_id(row.dagster_run_id).status == dg.DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
        assert run.tags["graph_runs/schedule_id"] == view["id"]
        assert run.tags["dagster/partition"] == view["id"]
        assert run.tags["dagster/run_key"] == row.idempotency_key
        assert len(instance.get_runs()) == 1
