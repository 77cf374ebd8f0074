"""operations.drift and jobs.drift: each kind of drift, made for real, then repaired.

Every test writes the drift into a real schedules database (SQLite and PostgreSQL) or a real
ephemeral Dagster instance, finds it with ``reconcile(fix=False)``, repairs it (or is told
it is left for a person) with ``fix=True``, and finds it gone, with one audit entry per
change. The command line is tested in ``tests/graph_runs/cli/test_reconcile.py``.
"""

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.access.grants import revoke_grant
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch.ledger import LEDGER_ID_TAG, record_outcome, start_run
from graph_runs.execution_api.client import Outcome, Usage
from graph_runs.jobs import graph_run_adhoc_job, graph_run_job
from graph_runs.jobs.drift import reconcile, reconcile_job
from graph_runs.jobs.partitions import SCHEDULE_PARTITIONS_NAME
from graph_runs.scheduling.triggers import request_partition_run, trigger_schedule
from graph_runs.store.tables import audit_log, dispatch_batches, run_ledger, schedules
from tests.dagster_helpers import make_resources
from tests.helpers import at, claim_at, make_grant, make_schedule

CREATED = at("2026-11-22T08:00:30Z")
NOW = at("2026-11-22T12:00:00Z")
USAGE = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_usd=Decimal("0.01"))


def kinds(engine: sa.Engine, instance: dg.DagsterInstance | None, *, fix: bool = False) -> dict:
    findings = reconcile(engine, instance, now=NOW, limits=ScheduleLimits(), fix=fix)
    return {f.kind: f for f in findings}


def audits(engine: sa.Engine, kind: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(audit_log.c.entity_id).where(audit_log.c.action == f"reconcile.{kind}")
            ).scalars()
        )


def _schedule(engine: sa.Engine, **fields: Any) -> str:
    with engine.begin() as conn:
        return make_schedule(conn, CREATED, make_grant(conn, CREATED), **fields)["id"]


def _with_partition(engine: sa.Engine, instance: dg.DagsterInstance, **fields: Any) -> str:
    schedule_id = _schedule(engine, **fields)
    instance.add_dynamic_partitions(SCHEDULE_PARTITIONS_NAME, [schedule_id])
    return schedule_id


def drift_partition_missing(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    return [_schedule(engine, cron="0 13 * * *")]


def drift_partition_orphaned(_engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    instance.add_dynamic_partitions(SCHEDULE_PARTITIONS_NAME, ["sch_gone"])
    return ["sch_gone"]


def drift_next_run_missing(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    schedule_id = _with_partition(engine, instance, cron="0 13 * * *")
    with engine.begin() as conn:
        conn.execute(schedules.update().values(next_run_at=None))
    return [schedule_id]


def drift_next_run_behind(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    # Hourly since 09:00, catch-up window one hour, and no sensor since: 12:00 is the latest.
    return [_with_partition(engine, instance, cron="0 * * * *")]


def drift_run_ended_unrecorded(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    schedule_id = _with_partition(engine, instance, cron="0 13 * * *")
    with engine.begin() as conn:
        conn.execute(schedules.update().values(next_run_at=at("2026-11-22T13:00:00Z")))
    # A partition run from the UI: its row is queued on a Dagster run that is gone.
    with engine.begin() as conn:
        ledger_id = trigger_schedule(conn, schedule_id, now=NOW)["ledger_id"]
        conn.execute(run_ledger.update().values(status="queued", dagster_run_id="run-gone"))
    return [ledger_id]


def drift_run_without_row(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    stray = instance.create_run_for_job(
        job_def=graph_run_adhoc_job, tags={LEDGER_ID_TAG: "gr_made_up"}
    )
    # A partition run from the UI carries no ledger tag; the row its op wrote names it.
    schedule_id = _with_partition(engine, instance, cron="0 13 * * *")
    ui_run = instance.create_run_for_job(job_def=graph_run_job, tags={})
    with engine.begin() as conn:
        ledger_id = request_partition_run(
            conn,
            schedule_id,
            dagster_run_id=ui_run.run_id,
            root_run_id=ui_run.run_id,
            requested_by=None,
            now=NOW,
        )
        start_run(conn, ledger_id, dagster_run_id=ui_run.run_id, now=NOW)
        record_outcome(
            conn,
            ledger_id,
            Outcome(status="succeeded", api_run_id="api-ui", usage=USAGE),
            dagster_run_id=ui_run.run_id,
            now=NOW,
        )
    for run in (stray, ui_run):  # only a run that has ended is judged
        instance.report_run_failed(run)
    return [stray.run_id]


def _succeeded_slot(engine: sa.Engine, instance: dg.DagsterInstance) -> str:
    schedule_id = _with_partition(engine, instance, cron="0 11 * * *")
    with engine.begin() as conn:
        claim_at(conn, at("2026-11-22T11:00:05Z"))
        conn.execute(
            schedules.update()
            .where(schedules.c.id == schedule_id)
            .values(next_run_at=at("2026-11-23T11:00:00Z"))
        )
        row = conn.execute(sa.select(run_ledger)).one()
        record_outcome(
            conn,
            row.id,
            Outcome(status="succeeded", api_run_id="api-1", usage=USAGE),
            dagster_run_id="d1",
            now=NOW,
        )
    return row.id


def drift_succeeded_without_receipt(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    ledger_id = _succeeded_slot(engine, instance)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM charge_receipts")
    return [ledger_id]


def drift_receipt_without_success(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    ledger_id = _succeeded_slot(engine, instance)
    with engine.begin() as conn:
        conn.execute(run_ledger.update().values(status="failed"))
    return [ledger_id]


def drift_schedule_in_error(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    schedule_id = _with_partition(engine, instance, cron="0 13 * * *")
    with engine.begin() as conn:
        conn.execute(schedules.update().values(status="error", last_error="timezone: unknown"))
    return [schedule_id]


def drift_schedule_on_dead_grant(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    schedule_id = _with_partition(engine, instance, cron="0 13 * * *")
    with engine.begin() as conn:
        grant_id = conn.execute(sa.select(schedules.c.grant_id)).scalar_one()
        revoke_grant(conn, grant_id, now=NOW, by="security")  # without pausing its schedules
    return [schedule_id]


def drift_lease_expired(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    schedule_id = _with_partition(engine, instance, cron="0 13 * * *")
    with engine.begin() as conn:
        conn.execute(
            schedules.update()
            .where(schedules.c.id == schedule_id)
            .values(next_run_at=at("2026-11-22T13:00:00Z"))
        )
        conn.execute(
            dispatch_batches.insert().values(
                id="batch_stuck",
                status="open",
                attempt=1,
                size=1,
                due_at=at("2026-11-22T11:00:00Z"),
                lease_until=at("2026-11-22T11:01:00Z"),
                created_at=at("2026-11-22T10:59:00Z"),
                updated_at=at("2026-11-22T11:00:00Z"),
            )
        )
    return ["batch_stuck"]


# kind -> (how to make it, whether --fix repairs it)
DRIFTS: dict[str, tuple[Callable[[sa.Engine, dg.DagsterInstance], list[str]], bool]] = {
    "partition_missing": (drift_partition_missing, True),
    "partition_orphaned": (drift_partition_orphaned, True),
    "next_run_missing": (drift_next_run_missing, True),
    "next_run_behind": (drift_next_run_behind, True),
    "run_ended_unrecorded": (drift_run_ended_unrecorded, True),
    "schedule_on_dead_grant": (drift_schedule_on_dead_grant, True),
    "lease_expired": (drift_lease_expired, False),
    "run_without_row": (drift_run_without_row, False),
    "succeeded_without_receipt": (drift_succeeded_without_receipt, False),
    "receipt_without_success": (drift_receipt_without_success, False),
    "schedule_in_error": (drift_schedule_in_error, False),
}


@pytest.mark.parametrize("kind", sorted(DRIFTS))
def test_each_kind_of_drift_is_found_then_repaired_or_left_for_a_person(
    engine: sa.Engine, instance: dg.DagsterInstance, kind: str
) -> None:
    make, fixable = DRIFTS[kind]
    ids = make(engine, instance)
    before = kinds(engine, instance)
    assert kind in before, sorted(before)
    assert before[kind].ids == sorted(ids) and before[kind].fixable is fixable
    # The made drift is the only drift.
    assert set(before) == {kind}, sorted(before)
    repaired = kinds(engine, instance, fix=True)[kind]
    after = kinds(engine, instance)
    if fixable:
        assert repaired.repaired == sorted(ids)
        assert sorted(audits(engine, kind)) == sorted(ids)
        assert kind not in after, after[kind] if kind in after else None
    else:
        assert repaired.repaired == [] and audits(engine, kind) == []
        assert after[kind].ids == sorted(ids)


def test_repairs_leave_the_right_state_behind(
    engine: sa.Engine, instance: dg.DagsterInstance
) -> None:
    missing = drift_partition_missing(engine, instance)
    drift_partition_orphaned(engine, instance)
    with engine.begin() as conn:
        # Created a minute ago: the sensor's next tick adds its partition; no drift yet.
        just_now = NOW - dt.timedelta(minutes=1)
        make_schedule(conn, just_now, make_grant(conn, just_now), cron="0 13 * * *")
    kinds(engine, instance, fix=True)
    assert set(instance.get_dynamic_partitions(SCHEDULE_PARTITIONS_NAME)) == set(missing)


def test_a_behind_schedule_is_claimed_under_its_policies_and_a_dead_grant_paused(
    engine: sa.Engine, instance: dg.DagsterInstance
) -> None:
    behind = drift_next_run_behind(engine, instance)[0]
    kinds(engine, instance, fix=True)
    with engine.connect() as conn:
        statuses = [
            r.status
            for r in conn.execute(sa.select(run_ledger).order_by(run_ledger.c.scheduled_for))
        ]
        schedule = conn.execute(sa.select(schedules).where(schedules.c.id == behind)).one()
    # 09:00, 10:00 and 11:00 beyond the hour: missed; 12:00, the latest, fires.
    assert statuses == ["missed", "missed", "missed", "pending"]
    assert schedule.next_run_at == at("2026-11-22T13:00:00Z")


def test_the_hourly_job_reports_its_findings_as_metadata(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    drift_partition_orphaned(engine, instance)
    drift_schedule_in_error(engine, instance)
    result = reconcile_job.execute_in_process(
        instance=instance,
        resources=make_resources(database_url, None, NOW.isoformat()),
        run_config={"ops": {"reconcile_drift": {"config": {"fix": True}}}},
    )
    assert result.success
    (materialized,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = materialized.event_specific_data.metadata  # type: ignore[union-attr]
    assert metadata["findings"].value == 2 and metadata["left_for_a_person"].value == 1
    assert "schedule_in_error" in metadata["report"].value
