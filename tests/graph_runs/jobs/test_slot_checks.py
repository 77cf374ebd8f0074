"""graph_runs.jobs.slot_checks: the health asset and its checks, which fail naming the schedules.

The checks run as Dagster runs them (the ``slot_health_checks`` job) on an ephemeral
instance, against a real schedules database with a fixed clock.
"""

from typing import Any

import dagster as dg
import sqlalchemy as sa

from graph_runs.jobs import scheduled_graph_runs
from graph_runs.jobs.slot_checks import (
    HEALTH_ASSET_KEY,
    SLOT_CHECKS,
    graph_runs_health,
    slot_checks_job,
)
from graph_runs.store.tables import schedules
from tests.dagster_helpers import make_resources
from tests.helpers import at, claim_at, make_grant, make_schedule

CREATED = at("2026-11-22T08:00:30Z")


def evaluate(database_url: str, instance: dg.DagsterInstance, now: str) -> dict[str, Any]:
    defs = dg.Definitions(
        assets=[scheduled_graph_runs, graph_runs_health],
        asset_checks=SLOT_CHECKS,
        jobs=[slot_checks_job],
        resources=make_resources(database_url, None, now),
    )
    result = defs.resolve_job_def("slot_health_checks").execute_in_process(instance=instance)
    assert result.success
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_all_checks_pass_on_a_scheduler_that_keeps_up(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    with engine.begin() as conn:
        make_schedule(conn, CREATED, make_grant(conn, CREATED), cron="0 13 * * *")
    checks = evaluate(database_url, instance, "2026-11-22T12:00:00Z")
    assert sorted(checks) == [
        "dispatch_lag_within_bounds",
        "no_schedule_in_error",
        "no_slot_missed_last_hour",
    ]
    assert all(c.passed for c in checks.values())


def test_each_check_fails_naming_the_schedules(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        # Hourly, catch-up none, no tick since 10:00: 11:00 and 12:00 missed at 12:20.
        late = make_schedule(conn, CREATED, grant, cron="0 * * * *", catchup="none")
        broken = make_schedule(conn, CREATED, grant, cron="0 13 * * *")
        claim_at(conn, at("2026-11-22T10:00:05Z"))
        claim_at(conn, at("2026-11-22T12:20:00Z"))
        conn.execute(
            schedules.update().where(schedules.c.id == broken["id"]).values(status="error")
        )
    checks = evaluate(database_url, instance, "2026-11-22T12:30:00Z")
    missed = checks["no_slot_missed_last_hour"]
    assert not missed.passed and late["id"] in missed.description
    assert missed.metadata["schedules"].value == late["id"]
    in_error = checks["no_schedule_in_error"]
    assert not in_error.passed and in_error.metadata["schedules"].value == broken["id"]
    # The 10:00 slot was claimed and never fired: backlog, and its age.
    lag = checks["dispatch_lag_within_bounds"]
    assert not lag.passed and "oldest due 2026-11-22T10:00:00Z" in lag.description
    # The schedule waiting is named; the one in error is not claimed, so not late.
    assert lag.metadata["schedules"].value == late["id"]


def test_the_checks_latest_results_belong_to_the_health_assets_latest_materialization(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    # Issue 22: on the slots asset, which every slot materializes, the UI showed the checks
    # "Not Evaluated" (it shows a check's execution for its asset's latest materialization).
    with engine.begin() as conn:
        make_schedule(conn, CREATED, make_grant(conn, CREATED), cron="0 13 * * *")
    for now in ("2026-11-22T12:00:00Z", "2026-11-22T12:05:00Z"):
        checks = evaluate(database_url, instance, now)
    latest = instance.get_latest_materialization_event(dg.AssetKey(HEALTH_ASSET_KEY))
    assert latest is not None and latest.asset_materialization is not None
    assert latest.asset_materialization.metadata["healthy"].value is True
    for name, evaluation in checks.items():
        assert evaluation.asset_key == dg.AssetKey(HEALTH_ASSET_KEY)
        (record,) = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(HEALTH_ASSET_KEY), name), limit=1
        )
        assert record.run_id == latest.run_id, name
    # A slot's event on the slots asset changes nothing of that pairing.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="scheduled_graph_runs", partition="sch_x")
    )
    assert (
        instance.get_latest_materialization_event(dg.AssetKey(HEALTH_ASSET_KEY)).run_id
        == latest.run_id
    )  # type: ignore[union-attr]
