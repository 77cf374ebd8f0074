"""Driving the sensor and the job in-process the way the daemon would, for tests."""

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from graph_runs.core.cron import parse_instant
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.jobs import dispatch_batch_job, graph_run_job
from graph_runs.resources import (
    ClockResource,
    DatabaseResource,
    DispatchResource,
    ExecutionApiResource,
    GrantsResource,
    ScheduleLimitsResource,
)
from graph_runs.scheduling.schedules import pause_schedule, resume_schedule
from graph_runs.sensors.graph_run_approvals_sensor import make_graph_run_approvals_sensor
from graph_runs.sensors.graph_schedules_sensor import make_graph_schedules_sensor
from graph_runs.sensors.slot_events_sensor import MAX_EVENTS_PER_TICK, make_slot_events_sensor
from graph_runs.store.tables import execution_grants
from tests.conftest import RunningApi
from tests.helpers import at, make_grant, make_schedule


class FixedClock(ClockResource):
    """A clock pinned at ``fixed_now`` (ISO 8601): tests only, never in the definitions.

    Its timer starts there and moves only when something sleeps, so a dispatch run in a
    test fires at exact instants without waiting.
    """

    fixed_now: str

    def now(self) -> dt.datetime:
        """The pinned instant."""
        return parse_instant(self.fixed_now)

    def timer(self) -> tuple[Callable[[], dt.datetime], Callable[[float], Awaitable[None]]]:
        """A clock that moves only by the sleeps it is given."""
        current = [parse_instant(self.fixed_now)]

        async def sleep(seconds: float) -> None:
            current[0] += dt.timedelta(seconds=max(seconds, 0.0))
            await asyncio.sleep(0)

        return (lambda: current[0]), sleep


def make_resources(database_url: str, api: RunningApi | None, now: str) -> dict[str, Any]:
    database = DatabaseResource(url=database_url)
    return {
        "database": database,
        "grants": GrantsResource(database=database),
        "clock": FixedClock(fixed_now=now),
        "schedule_limits": ScheduleLimitsResource(),
        "dispatch": DispatchResource(),
        "execution_api": ExecutionApiResource(
            base_url=api.url if api else "http://127.0.0.1:9",
            token=api.token if api else "unused",
            backoff_base_seconds=0.0,
            backoff_max_seconds=0.0,
            max_attempts=3,
        ),
    }


def tick(
    instance: dg.DagsterInstance, resources: dict[str, Any], cursor: str | None
) -> dg.SensorResult:
    """One evaluation of graph_schedules_sensor; always a SensorResult."""
    sensor = make_graph_schedules_sensor(30)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult), result
    return result


def approvals_tick(
    instance: dg.DagsterInstance, resources: dict[str, Any]
) -> dg.SensorResult | dg.SkipReason:
    """One evaluation of graph_run_approvals_sensor."""
    sensor = make_graph_run_approvals_sensor(30)
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason), result
    return result


def events_tick(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    cursor: str | None,
    max_per_tick: int = MAX_EVENTS_PER_TICK,
) -> dg.SensorResult | dg.SkipReason:
    """One evaluation of slot_events_sensor."""
    sensor = make_slot_events_sensor(30, max_per_tick)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason), result
    return result


def apply_events(instance: dg.DagsterInstance, result: dg.SensorResult | dg.SkipReason) -> None:
    """What the daemon does with a tick's asset events: writes them, in order, runless."""
    for event in result.asset_events if isinstance(result, dg.SensorResult) else []:
        instance.report_runless_asset_event(event)


def apply_partitions(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """What the daemon does with the tick's partition requests, before its run requests."""
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def job_of(request: dg.RunRequest) -> dg.JobDefinition:
    """The job a run request names (a batch of one keeps its schedule's partitioned job)."""
    return dispatch_batch_job if request.job_name == dispatch_batch_job.name else graph_run_job


def launch(
    instance: dg.DagsterInstance, resources: dict[str, Any], request: dg.RunRequest
) -> dg.ExecuteInProcessResult:
    """Run a run request's job in-process, tagged as the daemon would tag it."""
    tags = {**request.tags, "dagster/run_key": request.run_key or ""}
    return job_of(request).execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        tags=tags,
        resources=resources,
        raise_on_error=False,
    )


# Where the daemon's runs come from: the code location of workspace.yaml. Dagster records it
# on every run it submits (and refuses to queue a run without one).
REPOSITORY_ORIGIN = RemoteRepositoryOrigin(
    code_location_origin=InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="graph_runs.definitions", attribute="defs"),
        location_name="graph_runs",
    ),
    repository_name="__repository__",
)


def daemon_run(
    instance: dg.DagsterInstance,
    request: dg.RunRequest,
    status: dg.DagsterRunStatus = dg.DagsterRunStatus.QUEUED,
) -> dg.DagsterRun:
    """The run the daemon makes of a run request: QUEUED once submitted to the run queue.

    NOT_STARTED is a run it created and then did not submit (it died in between).
    """
    return create_run_for_test(
        instance,
        job_name=job_of(request).name,
        status=status,
        tags={
            **request.tags,
            "dagster/partition": request.partition_key or "",
            "dagster/run_key": request.run_key or "",
        },
        remote_job_origin=REPOSITORY_ORIGIN.get_job_origin(job_of(request).name),
    )


def fire_three_owners(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, api: RunningApi
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Three outcomes made by the real paths: resources, and Alice's, Bob's, Carol's schedules.

    Alice's slot succeeds; Bob's grant cannot run the graph, so his fails scope_denied;
    Carol's schedule was paused over three slots, recorded skipped_paused on resume.
    """
    created = at("2026-11-22T10:00:30Z")
    with engine.begin() as conn:
        alice = make_schedule(conn, created, make_grant(conn, created))
        bob_grant = make_grant(conn, created, owner="bob", scopes=["graph:execute:echo"])
        bob = make_schedule(conn, created, bob_grant)
        conn.execute(
            execution_grants.update()
            .where(execution_grants.c.id == bob_grant.id)
            .values(scopes=["graph:execute:other"])
        )
        carol = make_schedule(conn, created, make_grant(conn, created, owner="carol"))
        pause_schedule(conn, carol["id"], now=created, note="holiday")
    resources = make_resources(database_url, api, "2026-11-22T10:01:02Z")
    result = tick(instance, resources, None)
    apply_partitions(instance, result)
    runs = [launch(instance, resources, request) for request in result.run_requests or []]
    assert runs and all(run.success for run in runs)
    with engine.begin() as conn:
        resume_schedule(conn, carol["id"], now=at("2026-11-22T10:03:10Z"), limits=ScheduleLimits())
    return resources, alice, bob, carol
