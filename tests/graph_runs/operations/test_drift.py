"""operations.drift and jobs.drift: each kind of drift, made for real, then repaired.

Every test writes the drift into a real schedules database (SQLite and PostgreSQL) or a real
ephemeral Dagster instance, finds it with ``reconcile(fix=False)``, repairs it (or is told
it is left for a person) with ``fix=True``, and finds it gone, with one audit entry per
change. The command line is tested in ``tests/graph_runs/cli/test_reconcile.py``.
"""

import datetime as dt
import sqlite3
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
from graph_runs.operations.drift_repair import repair
from graph_runs.scheduling.schedules import delete_schedule
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


def drift_partition_orphaned(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    schedule_id = _with_partition(engine, instance, cron="0 13 * * *")
    with engine.begin() as conn:
        delete_schedule(conn, schedule_id, now=NOW)
    return [schedule_id]


def drift_partition_unknown(_engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    # Created after the database's backup, say: deleting it would hide a live schedule.
    instance.add_dynamic_partitions(SCHEDULE_PARTITIONS_NAME, ["sch_unknown"])
    return ["sch_unknown"]


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
    # A partition run from the UI: its row is queued on a Dagster run that failed.
    run = instance.create_run_for_job(job_def=graph_run_job, tags={})
    instance.report_run_failed(run)
    with engine.begin() as conn:
        ledger_id = trigger_schedule(conn, schedule_id, now=NOW)["ledger_id"]
        conn.execute(run_ledger.update().values(status="queued", dagster_run_id=run.run_id))
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
        run = instance.create_run_for_job(job_def=graph_run_job, tags={LEDGER_ID_TAG: row.id})
        record_outcome(
            conn,
            row.id,
            Outcome(status="succeeded", api_run_id="api-1", usage=USAGE),
            dagster_run_id=run.run_id,
            now=NOW,
        )
    instance.report_run_failed(run)  # ended, its row recorded: no drift on the run side
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


def drift_api_run_unsettled(engine: sa.Engine, instance: dg.DagsterInstance) -> list[str]:
    # Given up on while the API may have run it to its end, and billed for it.
    schedule_id = _with_partition(engine, instance, cron="0 13 * * *")
    with engine.begin() as conn:
        conn.execute(schedules.update().values(next_run_at=at("2026-11-22T13:00:00Z")))
        ledger_id = trigger_schedule(conn, schedule_id, now=NOW)["ledger_id"]
        conn.execute(
            run_ledger.update().values(
                status="failed", error_code="dispatch_lost", api_run_id="apirun_9",
                started_at=NOW, finished_at=NOW,
            )
        )  # fmt: skip
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
    "partition_unknown": (drift_partition_unknown, False),
    "next_run_missing": (drift_next_run_missing, True),
    "next_run_behind": (drift_next_run_behind, False),
    "run_ended_unrecorded": (drift_run_ended_unrecorded, True),
    "schedule_on_dead_grant": (drift_schedule_on_dead_grant, True),
    "lease_expired": (drift_lease_expired, False),
    "run_without_row": (drift_run_without_row, False),
    "api_run_unsettled": (drift_api_run_unsettled, False),
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


def _statuses(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [
            r.status
            for r in conn.execute(sa.select(run_ledger).order_by(run_ledger.c.scheduled_for))
        ]


def test_a_behind_schedule_is_left_to_the_sensor_whose_catch_up_decides(
    engine: sa.Engine, instance: dg.DagsterInstance
) -> None:
    # Claimed by reconcile, the slot would fire whenever a dispatch run next came (hours
    # later, if the daemon is down) and push that hour's slot into skipped_overlap.
    behind = drift_next_run_behind(engine, instance)[0]
    kinds(engine, instance, fix=True)
    assert _statuses(engine) == []
    with engine.begin() as conn:
        claim_at(conn, NOW)
        schedule = conn.execute(sa.select(schedules).where(schedules.c.id == behind)).one()
    # 09:00, 10:00 and 11:00 beyond the hour: missed; 12:00, the latest, fires.
    assert _statuses(engine) == ["missed", "missed", "missed", "pending"]
    assert schedule.next_run_at == at("2026-11-22T13:00:00Z")


def test_a_missing_next_run_is_set_to_the_slot_the_sensor_would_plan(
    engine: sa.Engine, instance: dg.DagsterInstance
) -> None:
    schedule_id = _with_partition(engine, instance, cron="0 * * * *")
    with engine.begin() as conn:
        conn.execute(schedules.update().values(next_run_at=None, slot_cursor=None))
    assert _statuses(engine) == []
    kinds(engine, instance, fix=True)
    with engine.begin() as conn:
        # Created at 08:00:30: the first slot is 09:00, not the next hour after the repair.
        next_run = conn.execute(sa.select(schedules.c.next_run_at)).scalar_one()
        claim_at(conn, NOW)
    assert next_run == at("2026-11-22T09:00:00Z")
    assert _statuses(engine) == ["missed", "missed", "missed", "pending"]
    with engine.connect() as conn:
        detail = conn.execute(
            sa.select(audit_log.c.detail).where(
                audit_log.c.entity_id == schedule_id,
                audit_log.c.action == "reconcile.next_run_missing",
            )
        ).scalar_one()
    assert detail["before"] == {"next_run_at": None, "status": "active"}
    assert detail["after"] == {"next_run_at": "2026-11-22T09:00:00Z", "status": "active"}


def test_a_repair_changes_only_what_still_has_its_drift_and_audits_only_changes(
    engine: sa.Engine, instance: dg.DagsterInstance
) -> None:
    deleted = drift_next_run_missing(engine, instance)[0]
    healed = drift_next_run_missing(engine, instance)[0]
    found = reconcile(engine, instance, now=NOW, limits=ScheduleLimits(), fix=False)
    with engine.begin() as conn:
        # Between the find and the fix: one deleted, the other given its next run.
        delete_schedule(conn, deleted, now=NOW)
        conn.execute(
            schedules.update()
            .where(schedules.c.id == healed)
            .values(next_run_at=at("2026-11-22T14:00:00Z"))
        )
    repair(engine, found, now=NOW, limits=ScheduleLimits(), dagster=None)
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(schedules))}
    assert rows[deleted].status == "deleted" and rows[deleted].next_run_at is None
    assert rows[healed].next_run_at == at("2026-11-22T14:00:00Z")
    assert audits(engine, "next_run_missing") == []
    assert [f.repaired for f in found if f.kind == "next_run_missing"] == [[]]


def test_a_dagster_instance_that_knows_none_of_the_ledger_runs_repairs_nothing_of_dagster(
    engine: sa.Engine, instance: dg.DagsterInstance, tmp_path
) -> None:
    # The live instance runs a slot; reconcile is pointed at an empty one (a DAGSTER_HOME
    # without its dagster.yaml): the run looks gone, the partitions orphaned or missing.
    schedule_id = _with_partition(engine, instance, cron="0 13 * * *")
    drift_partition_orphaned(engine, instance)
    live = instance.create_run_for_job(job_def=graph_run_job, tags={})
    instance.handle_run_event(
        live.run_id,
        dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_START.value, job_name=live.job_name
        ),
    )
    with engine.begin() as conn:
        ledger_id = trigger_schedule(conn, schedule_id, now=NOW)["ledger_id"]
        conn.execute(run_ledger.update().values(status="running", dagster_run_id=live.run_id))
    assert set(kinds(engine, instance)) == {"partition_orphaned"}
    with dg.instance_for_test() as stranger:
        found = kinds(engine, stranger, fix=True)
        assert stranger.get_dynamic_partitions(SCHEDULE_PARTITIONS_NAME) == []
    assert found["dagster_instance_unknown"].ids == [live.run_id]
    assert found["run_ended_unrecorded"].repaired == []
    assert found["partition_missing"].repaired == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(run_ledger.c.status)).scalar_one() == "running"
    assert ledger_id and audits(engine, "run_ended_unrecorded") == []


def test_the_hourly_job_reports_its_findings_as_metadata(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    drift_schedule_in_error(engine, instance)
    drift_partition_orphaned(engine, instance)
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


class _WatchedInstance:
    """A real instance whose every call first notes whether the schedules file is writable."""

    def __init__(self, instance: dg.DagsterInstance, path: str) -> None:
        self._instance = instance
        self._path = path
        self.calls: list[tuple[str, bool]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._instance, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, _writable(self._path)))
            return attr(*args, **kwargs)

        return call


def _writable(path: str) -> bool:
    """Whether another writer (a lease renewal, say) gets the write lock without waiting."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def test_on_sqlite_reconcile_reads_without_the_write_lock_and_never_holds_it_over_dagster(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's one write lock")
    drift_run_ended_unrecorded(engine, instance)
    drift_partition_missing(engine, instance)
    path = sa.make_url(database_url).database
    assert path is not None
    statements: list[tuple[str, bool]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _watch(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append((statement.split()[0], _writable(path)))

    watched = _WatchedInstance(instance, path)
    found = reconcile(engine, watched, now=NOW, limits=ScheduleLimits(), fix=False)  # type: ignore[arg-type]
    assert {"run_ended_unrecorded", "partition_missing"} <= {f.kind for f in found}
    # Finding drift reads the whole ledger; it never keeps a writer waiting.
    assert statements and all(free for _, free in statements), statements
    statements.clear()
    found = reconcile(engine, watched, now=NOW, limits=ScheduleLimits(), fix=True)  # type: ignore[arg-type]
    assert all(f.repaired for f in found if f.kind in ("run_ended_unrecorded", "partition_missing"))
    assert "get_run_records" in {name for name, _ in watched.calls}
    assert all(free for _, free in watched.calls), watched.calls
    sa.event.remove(engine, "before_cursor_execute", _watch)
