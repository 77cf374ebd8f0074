"""The code location's one entry point: ``defs``, loaded by ``workspace.yaml``.

Configuration comes from ``graph_runs.settings``; secrets (the API token, and the database
URL when it is set, since it may carry a password) reach resources through ``EnvVar`` so
that their values are never part of the definitions. Every resource is sealed
(``graph_runs.resources.sealed``): no run config, from the launchpad or GraphQL, can point
one elsewhere or set its clock.
"""

import dagster as dg

from graph_runs.jobs import dispatch_batch_job, graph_run_adhoc_job, scheduled_graph_runs
from graph_runs.jobs.dispatch import make_graph_run_job
from graph_runs.jobs.drift import reconcile_job, reconcile_schedule
from graph_runs.jobs.last_slot_check import last_slot_checks_job, last_slot_ok
from graph_runs.jobs.partition_tags import billing_tags
from graph_runs.jobs.slot_checks import (
    SLOT_CHECKS,
    graph_runs_health,
    slot_checks_job,
    slot_checks_schedule,
)
from graph_runs.resources import (
    ClockResource,
    DatabaseResource,
    DispatchResource,
    ExecutionApiResource,
    GrantsResource,
    ScheduleLimitsResource,
)
from graph_runs.resources.sealed import sealed
from graph_runs.sensors.graph_run_approvals_sensor import make_graph_run_approvals_sensor
from graph_runs.sensors.graph_schedules_sensor import make_graph_schedules_sensor
from graph_runs.sensors.slot_events_sensor import make_slot_events_sensor
from graph_runs.settings import (
    DATABASE_URL_VAR,
    EXECUTION_API_TOKEN_VAR,
    Settings,
    check_not_plain_dagster_dev,
    check_secrets,
    load_settings,
)


def build_definitions(settings: Settings) -> dg.Definitions:
    """The definitions for ``settings``; tests build their own with test values."""
    database = DatabaseResource(
        url=dg.EnvVar(DATABASE_URL_VAR)
        if settings.database_url_from_env
        else settings.default_database_url
    )
    limits = settings.schedule_limits
    # Its UI launches are tagged with the account that pays, read from this database.
    partition_job = make_graph_run_job(billing_tags(settings.database_url))
    return dg.Definitions(
        assets=[scheduled_graph_runs, graph_runs_health],
        asset_checks=[*SLOT_CHECKS, last_slot_ok],
        jobs=[
            partition_job,
            dispatch_batch_job,
            graph_run_adhoc_job,
            reconcile_job,
            slot_checks_job,
            last_slot_checks_job,
        ],
        schedules=[reconcile_schedule, slot_checks_schedule],
        sensors=[
            make_graph_schedules_sensor(settings.sensor_interval_seconds, partition_job),
            make_graph_run_approvals_sensor(settings.sensor_interval_seconds, partition_job),
            make_slot_events_sensor(settings.sensor_interval_seconds),
        ],
        resources=sealed(
            {
                "database": database,
                "grants": GrantsResource(database=database),
                "execution_api": ExecutionApiResource(
                    base_url=settings.execution_api_url,
                    token=dg.EnvVar(EXECUTION_API_TOKEN_VAR),
                    max_attempts=settings.api.max_attempts,
                    request_timeout_seconds=settings.api.request_timeout_seconds,
                ),
                "clock": ClockResource(),
                "dispatch": DispatchResource(
                    batch_size=settings.dispatch.batch_size,
                    max_concurrent_calls=settings.dispatch.max_concurrent_calls,
                    max_calls_per_account=settings.dispatch.max_calls_per_account,
                    parallel_runs=settings.dispatch.parallel_runs,
                    account_batches=settings.dispatch.account_batches,
                    slot_asset_events=settings.dispatch.slot_asset_events,
                    launch_allowance_seconds=settings.dispatch.launch_allowance_seconds,
                    lease_seconds=settings.dispatch.lease_seconds,
                    start_timeout_seconds=settings.dispatch.start_timeout_seconds,
                    hand_off_seconds=settings.dispatch.hand_off_seconds,
                ),
                "schedule_limits": ScheduleLimitsResource(
                    min_interval_seconds=limits.min_interval_seconds,
                    max_schedules_per_owner=limits.max_schedules_per_owner,
                    max_input_bytes=limits.max_input_bytes,
                ),
            }
        ),
    )


check_not_plain_dagster_dev()
check_secrets()
defs = build_definitions(load_settings())
