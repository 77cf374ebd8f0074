"""Health as an asset of its own, ``graph_runs_health``, and three checks on it, every 5 min.

Each check fails naming the schedules concerned, so that a Dagster+ alert policy on asset
checks (or an OSS sensor on check evaluations) can tell someone which schedule missed, the
alert users of Temporal ask for most. The figures are ``graph_runs.operations.health``'s,
the same as ``graph-runs status``.

Why an asset of their own: the UI shows a check's execution for its asset's latest
materialization. On ``scheduled_graph_runs``, which every slot materializes, a check run
apart from those showed "Not Evaluated" within a minute. ``graph_runs_health`` is
materialized only by the checks' own run, in the same step as them, so its latest
materialization always carries the checks' latest results.
"""

import dagster as dg

from graph_runs.operations import health
from graph_runs.resources import ClockResource, DatabaseResource

THRESHOLDS = health.Thresholds()
HEALTH_ASSET_KEY = "graph_runs_health"


@dg.asset(
    key=HEALTH_ASSET_KEY,
    group_name="graph_runs",
    description=(
        "graph-runs' health, as `graph-runs status` reports it: backlog, lag, slots not run "
        "and schedules in error, materialized every five minutes with its three checks."
    ),
)
def graph_runs_health(database: DatabaseResource, clock: ClockResource) -> dg.MaterializeResult:
    """The figures the checks judge, as this run read them."""
    with database.engine().connect() as conn:
        figures = health.health(conn, now=clock.now(), thresholds=THRESHOLDS)
    return dg.MaterializeResult(
        metadata={
            "healthy": figures["healthy"],
            "problems": "; ".join(figures["problems"]) or "none",
            "backlog": figures["backlog"]["total"],
            "lag_p99_seconds": figures["lag_last_hour"]["p99_seconds"] or 0.0,
            "schedules_in_error": figures["schedules_in_error"]["count"],
            "figures": dg.MetadataValue.json(figures),
        }
    )


def _ids(ids: list[str]) -> str:
    shown = ids[: health.MAX_IDS]
    more = f" (+{len(ids) - len(shown)} more)" if len(ids) > len(shown) else ""
    return " ".join(shown) + more


@dg.asset_check(
    asset=HEALTH_ASSET_KEY,
    description="No slot missed, or lost by graph-runs, in the last hour (policy skips aside).",
)
def no_slot_missed_last_hour(
    database: DatabaseResource, clock: ClockResource
) -> dg.AssetCheckResult:
    """Fails naming each schedule with a slot missed or lost in the last hour."""
    with database.engine().connect() as conn:
        unserved = health.unserved_schedules(conn, clock.now())
    ids = sorted(unserved)
    return dg.AssetCheckResult(
        passed=not unserved,
        description=(
            f"{sum(unserved.values())} slot(s) of {len(ids)} schedule(s) missed or lost in "
            f"the last hour: {_ids(ids)}"
            if unserved
            else "every slot of the last hour fired or was skipped by policy"
        ),
        metadata={"schedules": _ids(ids), "slots": sum(unserved.values())},
    )


@dg.asset_check(
    asset=HEALTH_ASSET_KEY,
    description="Slots fire on time: no due backlog, and the last hour's p99 lag within bounds.",
)
def dispatch_lag_within_bounds(
    database: DatabaseResource, clock: ClockResource
) -> dg.AssetCheckResult:
    """Fails when slots wait past the grace, or the p99 lag exceeds its bound."""
    with database.engine().connect() as conn:
        now = clock.now()
        backlog = health.backlog(conn, now, THRESHOLDS)
        lag = health.lag(conn, now)
        late = health.late_schedules(conn, now, THRESHOLDS)
    limit = THRESHOLDS.max_lag_p99_seconds
    slow = lag["p99_seconds"] is not None and limit is not None and lag["p99_seconds"] > limit
    behind = backlog["total"] > (THRESHOLDS.max_backlog or 0)
    return dg.AssetCheckResult(
        passed=not (slow or behind),
        description=(
            f"backlog {backlog['total']} slot(s), oldest due {backlog['oldest_due_at'] or '-'}"
            f"{', of ' + _ids(late) if late else ''}; "
            f"p99 lag {lag['p99_seconds']} s over {lag['slots']} slot(s) (bound {limit} s)"
        ),
        metadata={
            "schedules": _ids(late),
            "backlog": backlog["total"],
            "oldest_age_seconds": backlog["oldest_age_seconds"] or 0,
            "p50_seconds": lag["p50_seconds"] or 0.0,
            "p99_seconds": lag["p99_seconds"] or 0.0,
        },
    )


@dg.asset_check(
    asset=HEALTH_ASSET_KEY, description="No schedule is in error (invalid, not firing)."
)
def no_schedule_in_error(database: DatabaseResource) -> dg.AssetCheckResult:
    """Fails naming the schedules in ``error``; each one's reason is in its ``last_error``."""
    with database.engine().connect() as conn:
        in_error = health.schedules_in_error(conn)
    return dg.AssetCheckResult(
        passed=in_error["count"] == 0,
        description=(
            f"{in_error['count']} schedule(s) in error: {' '.join(in_error['ids'])}"
            if in_error["count"]
            else "no schedule in error"
        ),
        metadata={"schedules": " ".join(in_error["ids"]), "count": in_error["count"]},
    )


SLOT_CHECKS = [no_slot_missed_last_hour, dispatch_lag_within_bounds, no_schedule_in_error]
slot_checks_job = dg.define_asset_job(
    "slot_health_checks",
    selection=dg.AssetSelection.assets(HEALTH_ASSET_KEY)
    | dg.AssetSelection.checks_for_assets(HEALTH_ASSET_KEY),
)
slot_checks_schedule = dg.ScheduleDefinition(
    name="slot_health_checks_every_5_minutes",
    job=slot_checks_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
