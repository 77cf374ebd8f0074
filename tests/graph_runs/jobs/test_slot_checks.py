"""graph_runs.jobs.slot_checks: the asset checks on the slots asset fail naming the schedules.

The checks run as Dagster runs them (the ``slot_health_checks`` job) on an ephemeral
instance, against a real schedules database with a fixed clock.
"""

from typing import Any

import dagster as dg
import sqlalchemy as sa

from graph_runs.jobs import scheduled_graph_runs
from graph_runs.jobs.slot_checks import SLOT_CHECKS, slot_checks_job
from graph_runs.store.tables import schedules
from tests.dagster_helpers import make_resources
from tests.helpers import at, claim_at, make_grant, make_schedule

CREATED = at("2026-11-22T08:00:30Z")


def evaluate(database_url: str, instance: dg.DagsterInstance, now: str) -> dict[str, Any]:
    defs = dg.Definitions(
        assets=[scheduled_graph_runs],
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
