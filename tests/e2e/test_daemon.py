"""End to end: a real dagster-daemon fires a schedule through the local execution API.

Touches everything: the sensor in a code server, the queued run coordinator, a run worker
process, the schedules database, and Dagster's storage (SQLite, or PostgreSQL from
dagster.postgres.yaml when the schedules database is PostgreSQL).
"""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.core.statuses import IN_FLIGHT
from graph_runs.scheduling.schedules import pause_schedule
from graph_runs.scheduling.triggers import backfill_schedule, trigger_schedule
from graph_runs.store.tables import charge_receipts, run_ledger, schedules
from tests.conftest import RunningApi
from tests.e2e.conftest import Stack, slot_runs, wait_for
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
            status = conn.execute(sa.select(run_ledger.c.status)).scalar_one_or_none()
        return status in ("succeeded", "failed")

    wait_for(finished, stack, "the scheduled run to finish")
    with engine.connect() as conn:
        row = conn.execute(sa.select(run_ledger)).one()
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
        # A lone slot is a batch of one on its schedule's partition.
        assert run.tags["dagster/partition"] == view["id"]
        assert run.tags["dagster/run_key"] == f"batch:{row.batch_id}:1"
        key = dg.AssetKey("scheduled_graph_runs")
        # Announced by the slot events sensor on its next tick, linking the run that fired it.
        wait_for(
            lambda: instance.fetch_materializations(key, 10).records, stack, "the slot's event"
        )
        (event,) = instance.fetch_materializations(key, 10).records
        materialization = event.asset_materialization
        assert materialization is not None and event.partition_key == view["id"]
        assert materialization.metadata["run"].value == row.dagster_run_id
        assert len(slot_runs(instance)) == 1


def test_daemon_catches_up_runs_triggers_and_backfills_once_and_pause_stops_fires(
    stack: Stack, engine: sa.Engine, execution_api: RunningApi
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    minute = now.replace(second=0)
    ago = now - dt.timedelta(minutes=10)

    def backfill_two_days(conn: sa.Connection) -> dict:
        return backfill_schedule(
            conn,
            daily["id"],
            start=now - dt.timedelta(days=2),
            end=now,
            now=now,
            limits=ScheduleLimits(),
        )

    with engine.begin() as conn:
        grant = make_grant(conn, now - dt.timedelta(days=3))
        # Down for ten minutes: catch-up `all` fires each missed slot up to its end.
        downtime = make_schedule(
            conn,
            ago,
            grant,
            catchup="all",
            overlap="allow_all",
            end_at=minute - dt.timedelta(minutes=4, seconds=30),
        )
        # Paused, yet trigger and backfill run it, once per request and per slot.
        daily = make_schedule(conn, now - dt.timedelta(days=3), grant, cron="0 0 * * *")
        pause_schedule(conn, daily["id"], now=ago, note="manual only", by="ana")
        report = backfill_two_days(conn)
        assert (report["ran"], report["already"]) == (2, 0)
        trigger_schedule(conn, daily["id"], now=now, requested_by="ana", request_key="once")
        trigger_schedule(conn, daily["id"], now=now, requested_by="ana", request_key="once")
        # Two every-minute schedules: one is paused once it has run, the other shows that
        # the sensor went on firing meanwhile.
        paused = make_schedule(conn, ago, grant)
        witness = make_schedule(conn, ago, grant)
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")

    def rows(schedule_id: str) -> list[sa.Row]:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(run_ledger)
                    .where(run_ledger.c.schedule_id == schedule_id)
                    .order_by(run_ledger.c.scheduled_for)
                )
            )

    def settled(schedule_id: str, count: int) -> bool:
        done = [r for r in rows(schedule_id) if r.status in ("succeeded", "failed")]
        return len(done) >= count

    wait_for(lambda: settled(downtime["id"], 5), stack, "the five caught-up slots")
    wait_for(lambda: settled(daily["id"], 3), stack, "the backfill and the trigger")
    wait_for(lambda: settled(paused["id"], 1), stack, "the every-minute schedule's first run")
    with engine.begin() as conn:
        pause_schedule(conn, paused["id"], now=now, note="stop", by="ana")
    paused_at = dt.datetime.now(dt.UTC)
    next_minute = paused_at.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    wait_for(
        lambda: any(
            r.scheduled_for and r.scheduled_for >= next_minute for r in rows(witness["id"])
        ),
        stack,
        "the witness schedule to fire after the pause",
    )
    caught_up = rows(downtime["id"])
    assert [r.status for r in caught_up] == ["succeeded"] * 5
    assert [r.scheduled_for for r in caught_up] == [
        minute - dt.timedelta(minutes=m) for m in (9, 8, 7, 6, 5)
    ]
    assert {r.trigger_kind for r in rows(daily["id"])} == {"backfill", "manual"}
    assert [r.status for r in rows(daily["id"])] == ["succeeded"] * 3
    # A slot claimed ahead before the pause was cancelled by it: it never reached the API.
    after_pause = [r for r in rows(paused["id"]) if r.scheduled_for >= next_minute]
    assert all(r.status == "cancelled" and r.api_run_id is None for r in after_pause)
    with engine.begin() as conn:
        again = backfill_two_days(conn)
        assert (again["ran"], again["already"]) == (0, 2)
        (state,) = conn.execute(
            sa.select(schedules.c.status).where(schedules.c.id == downtime["id"])
        ).one()
    assert state == "completed"
    # Exactly once at the API: once nothing is in flight, one execution per ledger row that
    # reached it, and no API run twice.
    with engine.begin() as conn:
        pause_schedule(conn, witness["id"], now=now, note="end of test")

    def quiet() -> bool:
        with engine.connect() as conn:
            return not conn.execute(
                sa.select(sa.func.count())
                .select_from(run_ledger)
                .where(run_ledger.c.status.in_(sorted(IN_FLIGHT)))
            ).scalar_one()

    wait_for(quiet, stack, "every run in flight to settle")
    with engine.connect() as conn:
        api_run_ids = list(
            conn.execute(
                sa.select(run_ledger.c.api_run_id).where(run_ledger.c.api_run_id.is_not(None))
            ).scalars()
        )
    assert len(api_run_ids) == len(set(api_run_ids)) == execution_api.store.executions
