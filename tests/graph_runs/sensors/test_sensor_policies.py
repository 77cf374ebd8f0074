"""sensors.graph_schedules_sensor with scheduling policies, against a real Dagster instance.

Pausing cancels a batched slot before its run fires it, a batch whose run dies is
dispatched again and, after its last attempt, settled dispatch_lost, a run that stops
renewing its lease is replaced while Dagster still calls it STARTED, a buffered slot gets
its run once the running one ends, cancel_other cancels the older slot, and a run launched
for a partition from the UI is a trigger-now. Real SQLite and PostgreSQL databases, the
real local execution API, runs executed in-process.
"""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch import batches
from graph_runs.dispatch.ledger import BILLING_ACCOUNT_TAG
from graph_runs.jobs import graph_run_job
from graph_runs.scheduling.schedules import pause_schedule
from graph_runs.scheduling.triggers import backfill_schedule, trigger_schedule
from graph_runs.store.tables import charge_receipts, dispatch_batches, run_ledger
from tests.conftest import RunningApi
from tests.dagster_helpers import apply_partitions, daemon_run, launch, make_resources, tick
from tests.helpers import at, ledger_statuses, make_grant, make_schedule

CREATED = at("2026-11-22T10:00:30Z")


def new_schedule(engine: sa.Engine, **fields) -> dict:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        return make_schedule(conn, CREATED, grant, **fields)


def statuses(engine: sa.Engine, schedule_id: str) -> list[tuple[str | None, str]]:
    with engine.connect() as conn:
        return ledger_statuses(conn, schedule_id)


def create_run(instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.DagsterRun:
    """What the daemon does with a run request: a run in the run queue, not started yet."""
    return daemon_run(instance, request)


def test_pausing_cancels_a_batched_slot_and_its_run_then_fires_nothing(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    view = new_schedule(engine)
    resources = make_resources(database_url, execution_api, "2026-11-22T10:01:02Z")
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    (request,) = first.run_requests or []
    create_run(instance, request)
    tick(instance, resources, first.cursor)
    with engine.begin() as conn:
        pause_schedule(conn, view["id"], now=at("2026-11-22T10:01:20Z"), note="stop", by="ana")
    assert statuses(engine, view["id"]) == [("2026-11-22T10:01:00Z", "cancelled")]
    # The batch's run starts anyway: it finds nothing to fire, and closes the batch.
    late = launch(instance, resources, request)
    assert late.success and execution_api.store.executions == 0
    assert statuses(engine, view["id"]) == [("2026-11-22T10:01:00Z", "cancelled")]
    assert not tick(instance, resources, None).run_requests


def test_a_batch_whose_run_dies_is_dispatched_again_then_settled_dispatch_lost(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    view = new_schedule(engine)  # overlap skip: a stuck row would block every later slot
    resources = make_resources(database_url, None, "2026-11-22T10:01:02Z")
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    requests = list(first.run_requests or [])
    for attempt in (1, 2, 3):
        (request,) = requests
        assert request.run_key is not None and request.run_key.endswith(f":{attempt}")
        run = create_run(instance, request)
        instance.report_run_failed(run)  # ended without recording anything
        requests = list(tick(instance, resources, None).run_requests or [])
    assert requests == []
    with engine.connect() as conn:
        row = conn.execute(sa.select(run_ledger)).one()
    assert (row.status, row.error_code) == ("failed", "dispatch_lost")
    assert "3 dispatch runs ended before recording an outcome" in row.error_message
    # The schedule is free: its next slot fires.
    later = tick(instance, make_resources(database_url, None, "2026-11-22T10:02:02Z"), None)
    assert statuses(engine, view["id"]) == [
        ("2026-11-22T10:01:00Z", "failed"),
        ("2026-11-22T10:02:00Z", "pending"),
    ]
    assert len(later.run_requests or []) == 1


@pytest.mark.parametrize(
    ("status", "kept_until", "replaced_at"),
    [
        # Being launched (an image pull): the launcher's start timeout, 180 s.
        (dg.DagsterRunStatus.STARTING, "2026-11-22T10:03:30Z", "2026-11-22T10:03:32Z"),
        # Its worker is up and has not taken its lease yet: one lease, 60 s.
        (dg.DagsterRunStatus.STARTED, "2026-11-22T10:01:30Z", "2026-11-22T10:01:32Z"),
    ],
)
def test_a_run_slow_to_start_keeps_its_batch_for_the_start_timeout(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    status: dg.DagsterRunStatus,
    kept_until: str,
    replaced_at: str,
) -> None:
    """Review defect A8: a run STARTING for more than a lease (60 s) lost its batch.

    Its slots went to the next attempt while the first run was still being launched; after
    three such attempts they were all settled ``dispatch_lost``.
    """
    new_schedule(engine)
    first = tick(instance, make_resources(database_url, None, "2026-11-22T10:00:30Z"), None)
    apply_partitions(instance, first)
    (request,) = first.run_requests or []
    daemon_run(instance, request, status)
    batch_id = request.tags[batches.BATCH_ID_TAG]

    def requests_at(now: str) -> list[dg.RunRequest]:
        result = tick(instance, make_resources(database_url, None, now), None)
        return [r for r in result.run_requests or [] if r.tags[batches.BATCH_ID_TAG] == batch_id]

    assert requests_at("2026-11-22T10:00:31Z") == []  # seen going: its grace starts now
    assert requests_at(kept_until) == []
    (again,) = requests_at(replaced_at)
    assert again.run_key == f"batch:{batch_id}:2"


def test_a_started_run_that_stops_renewing_its_lease_is_replaced_and_fires_nothing_after(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    """Dagster still says STARTED (no run monitoring): only the lease shows the run is gone."""
    view = new_schedule(engine)
    resources = make_resources(database_url, execution_api, "2026-11-22T10:00:31Z")
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    (request,) = first.run_requests or []
    run = daemon_run(instance, request, dg.DagsterRunStatus.STARTED)
    with engine.begin() as conn:
        (batch_id,) = conn.execute(sa.select(dispatch_batches.c.id)).scalars()
        # The worker takes its lease (60 s) at 10:00:31, then hangs or dies unseen.
        assert batches.take_lease(
            conn, batch_id, 1, dagster_run_id=run.run_id,
            now=at("2026-11-22T10:00:31Z"), lease=dt.timedelta(seconds=60),
        )  # fmt: skip

    def requests_at(now: str) -> list[dg.RunRequest]:
        """This batch's run requests (the next minute's slot has a batch of its own)."""
        result = tick(instance, make_resources(database_url, None, now), None)
        return [r for r in result.run_requests or [] if r.tags[batches.BATCH_ID_TAG] == batch_id]

    # The sensor first sees the renewal at 10:00:45 (by its clock): the lease runs from then.
    assert requests_at("2026-11-22T10:00:45Z") == []
    assert requests_at("2026-11-22T10:01:45Z") == []  # no renewal seen for 60 s: holds
    (again,) = requests_at("2026-11-22T10:01:46Z")
    assert again.run_key == f"batch:{batch_id}:2"
    # The old worker wakes: its attempt is over, so it fires nothing.
    later = make_resources(database_url, execution_api, "2026-11-22T10:01:47Z")
    zombie = launch(instance, later, request)
    assert zombie.success and execution_api.store.executions == 0
    assert statuses(engine, view["id"])[0] == ("2026-11-22T10:01:00Z", "pending")
    assert launch(instance, later, again).success
    assert statuses(engine, view["id"])[0] == ("2026-11-22T10:01:00Z", "succeeded")
    assert execution_api.store.executions == 1


def test_a_buffered_slot_runs_after_the_long_run_ends(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    view = new_schedule(engine, overlap="buffer_one")
    resources = make_resources(database_url, execution_api, "2026-11-22T10:01:02Z")
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    (long_run,) = first.run_requests or []
    create_run(instance, long_run)
    second = tick(
        instance, make_resources(database_url, execution_api, "2026-11-22T10:02:02Z"), None
    )
    third = tick(
        instance, make_resources(database_url, execution_api, "2026-11-22T10:03:02Z"), None
    )
    assert not second.run_requests and not third.run_requests
    assert [s for _, s in statuses(engine, view["id"])] == [
        "pending",
        "buffered",
        "skipped_overlap",
    ]
    assert launch(instance, resources, long_run).success
    fourth = tick(
        instance, make_resources(database_url, execution_api, "2026-11-22T10:03:05Z"), None
    )
    (released,) = fourth.run_requests or []
    assert launch(instance, resources, released).success
    assert [s for _, s in statuses(engine, view["id"])] == [
        "succeeded",
        "succeeded",
        "skipped_overlap",
    ]
    assert execution_api.store.executions == 2


def test_cancel_other_cancels_the_older_run_and_starts_the_new_slot(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    view = new_schedule(engine, overlap="cancel_other")
    resources = make_resources(database_url, None, "2026-11-22T10:01:02Z")
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    (old,) = first.run_requests or []
    create_run(instance, old)
    tick(instance, resources, first.cursor)
    second = tick(instance, make_resources(database_url, None, "2026-11-22T10:02:02Z"), None)
    (new,) = second.run_requests or []
    assert new.run_key != old.run_key and new.partition_key == view["id"]
    assert statuses(engine, view["id"]) == [
        ("2026-11-22T10:01:00Z", "cancelled"),
        ("2026-11-22T10:02:00Z", "pending"),
    ]


def test_a_partition_run_from_the_ui_is_a_trigger_now_and_reexecution_reuses_it(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    view = new_schedule(engine, cron="0 12 * * *")
    resources = make_resources(database_url, execution_api, "2026-11-22T10:05:00Z")
    instance.add_dynamic_partitions("graph_run_schedules", [view["id"]])
    result = graph_run_job.execute_in_process(
        instance=instance,
        partition_key=view["id"],
        tags={"dagster/user": "ana@acme", BILLING_ACCOUNT_TAG: "alice-billing"},
        resources=resources,
    )
    assert result.success and execution_api.store.executions == 1
    with engine.connect() as conn:
        row = conn.execute(sa.select(run_ledger)).one()
        receipts = conn.execute(sa.select(sa.func.count()).select_from(charge_receipts)).scalar()
    assert (row.trigger_kind, row.requested_by, row.status) == ("manual", "ana@acme", "succeeded")
    assert row.idempotency_key == f"manual:{view['id']}:dagster:{result.run_id}"
    assert receipts == 1
    tags = instance.get_run_by_id(result.run_id).tags  # type: ignore[union-attr]
    assert tags["graph_runs/ledger_id"] == row.id and tags["graph_runs/trigger_kind"] == "manual"


def test_trigger_and_backfill_rows_get_runs_through_the_same_job_once(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    view = new_schedule(engine, cron="0 0 * * *")
    now = at("2026-11-22T10:05:00Z")
    with engine.begin() as conn:
        trigger_schedule(conn, view["id"], now=now, requested_by="ana", request_key="k")
        backfill_schedule(
            conn,
            view["id"],
            start=at("2026-11-20T00:00:00Z"),
            end=at("2026-11-21T00:00:00Z"),
            now=now,
            limits=ScheduleLimits(),
        )
    resources = make_resources(database_url, execution_api, "2026-11-22T10:05:02Z")
    result = tick(instance, resources, None)
    apply_partitions(instance, result)
    # All three fire now: one batch, one run.
    (request,) = result.run_requests or []
    assert request.tags["graph_runs/batch_size"] == "3"
    assert launch(instance, resources, request).success
    assert execution_api.store.executions == 3
    assert not tick(instance, resources, result.cursor).run_requests
    assert [s for _, s in statuses(engine, view["id"])] == ["succeeded"] * 3


def test_pause_terminate_of_a_fired_slot_settles_it_cancelled_on_the_next_attempt(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    """A batch's run is never terminated for one slot; its slot is asked to stop instead."""
    view = new_schedule(engine)
    resources = make_resources(database_url, execution_api, "2026-11-22T10:01:02Z")
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    (request,) = first.run_requests or []
    started = create_run(instance, request)
    with engine.begin() as conn:
        # The slot has fired in that run, as slot_status.fire records it.
        conn.execute(run_ledger.update().values(status="running", dagster_run_id=started.run_id))
        pause_schedule(conn, view["id"], now=at("2026-11-22T10:01:20Z"), note=None, terminate=True)
    assert statuses(engine, view["id"]) == [("2026-11-22T10:01:00Z", "cancelling")]
    instance.report_run_failed(started)  # its worker died
    (again,) = tick(instance, resources, None).run_requests or []
    assert again.run_key is not None and again.run_key.endswith(":2")
    assert launch(instance, resources, again).success
    assert statuses(engine, view["id"]) == [("2026-11-22T10:01:00Z", "cancelled")]
    assert execution_api.store.executions == 0
