"""sensors.graph_schedules_sensor: run requests, partitions and exactly-once across crashes.

The sensor is evaluated with build_sensor_context on instance_for_test, a real schedules
database (SQLite file and PostgreSQL) and a fixed clock; the runs it requests are executed
in-process against the real local execution API.
"""

import dagster as dg
import sqlalchemy as sa

from graph_runs.dispatch.ledger import BILLING_ACCOUNT_TAG
from graph_runs.jobs import SCHEDULE_PARTITIONS_NAME, dispatch_batch_job
from graph_runs.jobs.dispatch import make_graph_run_job
from graph_runs.scheduling.schedules import delete_schedule
from graph_runs.sensors.graph_schedules_sensor import make_graph_schedules_sensor
from graph_runs.store.tables import charge_receipts, run_ledger, schedules
from tests.conftest import RunningApi
from tests.dagster_helpers import apply_partitions, daemon_run, launch, make_resources, tick
from tests.helpers import at, make_grant, make_schedule

CREATED = at("2026-11-22T10:00:30Z")


def ledger_rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(run_ledger).order_by(run_ledger.c.scheduled_for)))


def new_schedule(engine: sa.Engine, **fields) -> dict:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        return make_schedule(conn, CREATED, grant, **fields)


def test_due_slot_gets_one_run_request_and_its_partition(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    view = new_schedule(engine)
    result = tick(instance, make_resources(database_url, None, "2026-11-22T10:01:02Z"), None)
    (request,) = result.run_requests or []
    (row,) = ledger_rows(engine)
    # A lone slot is a batch of one: its run keeps the schedule's partition.
    assert request.run_key == f"batch:{row.batch_id}:1"
    assert (request.job_name, request.partition_key) == ("graph_run_job", view["id"])
    assert request.tags["graph_runs/batch_id"] == row.batch_id
    assert request.tags["graph_runs/batch_attempt"] == "1"
    assert (row.status, row.due_at) == ("pending", at("2026-11-22T10:01:00Z"))
    assert row.idempotency_key == f"sched:{view['id']}:2026-11-22T10:01:00Z"
    (add,) = result.dynamic_partitions_requests or []
    assert isinstance(add, dg.AddDynamicPartitionsRequest)
    assert list(add.partition_keys) == [view["id"]]


def test_tick_that_dies_after_commit_neither_loses_nor_duplicates_a_slot(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    view = new_schedule(engine)
    resources = make_resources(database_url, execution_api, "2026-11-22T10:01:02Z")
    # Tick 1 commits the slot to the ledger, then "dies": Dagster never sees its result.
    lost = tick(instance, resources, None)
    assert len(lost.run_requests or []) == 1
    assert instance.get_runs_count() == 0
    # Tick 2 (same cursor, seven seconds later) asks again for the same run, and claims
    # nothing new (the next slot, 10:02, is beyond its 50 s lookahead).
    resources = make_resources(database_url, execution_api, "2026-11-22T10:01:09Z")
    retry = tick(instance, resources, None)
    assert [r.run_key for r in retry.run_requests or []] == [
        r.run_key for r in lost.run_requests or []
    ]
    assert len(ledger_rows(engine)) == 1
    # The daemon creates the run this time; it runs the slot once.
    apply_partitions(instance, retry)
    run = launch(instance, resources, (retry.run_requests or [])[0])
    assert run.success
    # A tick after the run exists (the daemon died before saving its cursor) requests nothing.
    after = tick(instance, resources, None)
    assert not after.run_requests
    (row,) = ledger_rows(engine)
    assert (row.status, row.dagster_run_id) == ("succeeded", run.run_id)
    assert execution_api.store.executions == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(charge_receipts)).scalar() == 1
        counts = conn.execute(sa.select(schedules.c.runs_total, schedules.c.runs_succeeded)).one()
    assert tuple(counts) == (1, 1)
    assert view["id"] in instance.get_dynamic_partitions(SCHEDULE_PARTITIONS_NAME)


def test_a_run_created_but_never_submitted_is_requested_again(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    """The daemon created the slot's run, then died before submitting it (NOT_STARTED).

    Such a run never starts by itself: trusting it left the row queued for ever. The row
    batch stays open and its run is requested again with the same run key, which makes the
    daemon submit the run it created; once submitted, it is not requested again.
    """
    new_schedule(engine)
    resources = make_resources(database_url, None, "2026-11-22T10:01:02Z")
    first = tick(instance, resources, None)
    (request,) = first.run_requests or []
    apply_partitions(instance, first)
    created = daemon_run(instance, request, dg.DagsterRunStatus.NOT_STARTED)
    second = tick(instance, resources, first.cursor)
    assert [r.run_key for r in second.run_requests or []] == [request.run_key]
    (row,) = ledger_rows(engine)
    assert (row.status, row.dagster_run_id) == ("pending", None)
    # What the daemon does with the repeated request: it submits the run it had created.
    instance.report_dagster_event(dg.DagsterEvent.job_enqueue(created), run_id=created.run_id)
    third = tick(instance, resources, second.cursor)
    assert not third.run_requests
    (row,) = ledger_rows(engine)
    assert (row.status, row.dagster_run_id) == ("pending", None)


def test_nothing_due_says_why_and_when(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    view = new_schedule(engine, cron="0 12 * * *")
    resources = make_resources(database_url, None, "2026-11-22T10:01:00Z")
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    second = tick(instance, resources, first.cursor)
    assert not second.run_requests and not second.dynamic_partitions_requests
    assert second.skip_reason is not None
    assert second.skip_reason.skip_message == (
        f"no schedule is due at 2026-11-22T10:01:00Z; next due: schedule {view['id']} "
        "at 2026-11-22T12:00:00Z"
    )


def test_missing_schema_skips_with_the_command_that_fixes_it(
    tmp_path, instance: dg.DagsterInstance
) -> None:
    resources = make_resources(f"sqlite:///{tmp_path / 'new.db'}", None, "2026-11-22T10:00:00Z")
    sensor_result = tick_or_skip(instance, resources)
    assert "run `graph-runs db upgrade`" in sensor_result


def tick_or_skip(instance: dg.DagsterInstance, resources: dict) -> str:
    from graph_runs.sensors.graph_schedules_sensor import make_graph_schedules_sensor

    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = make_graph_schedules_sensor(30)(context)
    assert isinstance(result, dg.SkipReason)
    return result.skip_message or ""


def test_deleted_schedules_lose_their_partition(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    view = new_schedule(engine, cron="0 12 * * *")
    first = tick(instance, make_resources(database_url, None, "2026-11-22T10:01:00Z"), None)
    apply_partitions(instance, first)
    assert instance.get_dynamic_partitions(SCHEDULE_PARTITIONS_NAME) == [view["id"]]
    with engine.begin() as conn:
        delete_schedule(conn, view["id"], now=at("2026-11-22T10:02:00Z"))
    second = tick(
        instance, make_resources(database_url, None, "2026-11-22T10:02:30Z"), first.cursor
    )
    (delete,) = second.dynamic_partitions_requests or []
    assert isinstance(delete, dg.DeleteDynamicPartitionsRequest)
    assert list(delete.partition_keys) == [view["id"]]


def test_full_sync_repairs_partitions_of_rows_removed_behind_our_back(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    instance.add_dynamic_partitions(SCHEDULE_PARTITIONS_NAME, ["sch_gone"])
    view = new_schedule(engine, cron="0 12 * * *")
    result = tick(instance, make_resources(database_url, None, "2026-11-22T10:01:00Z"), None)
    kinds = {
        type(r).__name__: list(r.partition_keys) for r in result.dynamic_partitions_requests or []
    }
    assert kinds == {
        "AddDynamicPartitionsRequest": [view["id"]],
        "DeleteDynamicPartitionsRequest": ["sch_gone"],
    }


def test_an_invalid_row_does_not_stop_the_others(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    view = new_schedule(engine)
    with engine.begin() as conn:
        conn.execute(
            schedules.insert().values(
                id="sch_broken",
                owner="alice",
                graph_id="echo",
                input={},
                cron="0 25 * * *",
                timezone="UTC",
                grant_id=view["grant_id"],
                created_at=CREATED,
                updated_at=CREATED,
            )
        )
    result = tick(instance, make_resources(database_url, None, "2026-11-22T10:01:02Z"), None)
    assert [r.partition_key for r in result.run_requests or []] == [view["id"]]
    with engine.connect() as conn:
        status, error = conn.execute(
            sa.select(schedules.c.status, schedules.c.last_error).where(
                schedules.c.id == "sch_broken"
            )
        ).one()
    assert status == "error" and error.startswith("cron:")


def test_a_batch_of_one_owners_slots_is_tagged_with_the_owner_for_the_runs_filter(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    # Issue 22: slots that shared a dispatch run carried only batch tags, so filtering the
    # Runs page by an owner or a schedule found nothing.
    with engine.begin() as conn:
        alice, bob = make_grant(conn, CREATED), make_grant(conn, CREATED, owner="bob")
        lone = make_schedule(conn, CREATED, alice, cron="0 11 * * *")
        for _ in range(2):
            make_schedule(conn, CREATED, alice, cron="0 12 * * *")
        make_schedule(conn, CREATED, alice, cron="0 13 * * *")
        make_schedule(conn, CREATED, bob, cron="0 13 * * *")
    tags_at: dict[str, dict[str, str]] = {}
    for hour in ("11", "12", "13"):
        resources = make_resources(database_url, None, f"2026-11-22T{hour}:00:02Z")
        seen = {t["graph_runs/batch_id"] for t in tags_at.values()}
        # No run works the earlier batches here: they are asked for again, as before.
        (request,) = [
            r for r in tick(instance, resources, None).run_requests or []
            if r.tags["graph_runs/batch_id"] not in seen
        ]  # fmt: skip
        tags_at[hour] = request.tags
    assert tags_at["11"]["graph_runs/owner"] == "alice"
    assert tags_at["11"]["graph_runs/schedule_id"] == lone["id"]
    # Two schedules of one owner: her runs, neither schedule's alone.
    assert tags_at["12"]["graph_runs/owner"] == "alice"
    assert "graph_runs/schedule_id" not in tags_at["12"]
    # Two owners: a tag naming one would hide the other.
    assert "graph_runs/owner" not in tags_at["13"]
    assert "graph_runs/schedule_id" not in tags_at["13"]
    # Never the billing account: the queue would hold a batch behind that account's runs.
    assert not any("billing_account" in t for tags in tags_at.values() for t in tags)


def test_the_daemons_resolution_of_a_batch_of_one_keeps_the_sensors_tags(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    # The daemon gives a partition's run request the job's partition tags unless it is
    # resolved already. The sensor's are: a batch of one must not gain a billing account
    # (which would hold it behind that account's UI runs), nor cost a query per request.
    view = new_schedule(engine)
    asked: list[str] = []

    def partition_tags(key: str) -> dict[str, str]:
        asked.append(key)
        return {BILLING_ACCOUNT_TAG: "alice-billing"}

    job = make_graph_run_job(partition_tags)
    sensor = make_graph_schedules_sensor(30, job)
    resources = make_resources(database_url, None, "2026-11-22T10:01:02Z")
    repository = dg.Definitions(
        jobs=[job, dispatch_batch_job], sensors=[sensor], resources=resources
    )
    with dg.build_sensor_context(
        instance=instance, resources=resources, repository_def=repository.get_repository_def()
    ) as context:
        data = sensor.evaluate_tick(context)
    (request,) = data.run_requests or []
    assert request.partition_key == view["id"]
    assert request.tags["dagster/partition"] == view["id"]
    assert BILLING_ACCOUNT_TAG not in request.tags and asked == []
