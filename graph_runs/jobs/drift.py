"""Drift repair with Dagster's side read from an instance: the command line and the hourly job.

``graph_runs.operations.drift`` finds and repairs; this module gives it Dagster's facts (partitions,
run statuses, graph-runs' recent runs), repairs the partitions, and runs it all as
``reconcile_job`` on ``reconcile_schedule`` (hourly), its findings shown as metadata.
"""

import datetime as dt
import functools
from typing import Any

import dagster as dg
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch.batches import BATCH_ID_TAG
from graph_runs.dispatch.ledger import LEDGER_ID_TAG
from graph_runs.jobs.partitions import SCHEDULE_PARTITIONS_NAME
from graph_runs.jobs.run_lookup import run_statuses
from graph_runs.operations import drift, drift_repair
from graph_runs.resources import ClockResource, DatabaseResource, ScheduleLimitsResource

OUR_JOBS = ("graph_run_job", "dispatch_batch_job", "graph_run_adhoc_job")
# Runs looked at for `run_without_row`: those updated within this window.
RECENT_RUNS = dt.timedelta(days=1)
MAX_RUNS_LOOKED_AT = 5_000


def dagster_facts(
    instance: dg.DagsterInstance, now: dt.datetime, run_ids: list[str], recent: list[str]
) -> drift.DagsterFacts:
    """Dagster's side of the comparison, read in batches, with no database transaction open.

    ``run_ids`` are the in-flight rows' runs; ``recent`` the ledger's newest, which any
    instance the daemon uses knows (``DagsterFacts.trusted``).
    """
    runs = [
        drift.RunFacts(
            run_id=record.dagster_run.run_id,
            job_name=record.dagster_run.job_name,
            status=record.dagster_run.status.value,
            ledger_id=record.dagster_run.tags.get(LEDGER_ID_TAG),
            batch_id=record.dagster_run.tags.get(BATCH_ID_TAG),
        )
        for job in OUR_JOBS
        for record in instance.get_run_records(
            dg.RunsFilter(job_name=job, updated_after=now - RECENT_RUNS),
            limit=MAX_RUNS_LOOKED_AT,
        )
    ]
    statuses = run_statuses(instance, sorted(set(run_ids) | set(recent)))
    return drift.DagsterFacts(
        partitions=frozenset(instance.get_dynamic_partitions(SCHEDULE_PARTITIONS_NAME)),
        statuses=statuses,
        looked_up=frozenset(run_ids),
        trusted=drift.knows_recent(statuses, recent),
        runs=runs,
    )


def reconcile(
    engine: sa.Engine,
    instance: dg.DagsterInstance | None,
    *,
    now: dt.datetime,
    limits: ScheduleLimits,
    fix: bool,
) -> list[drift.Finding]:
    """Find drift, and with ``fix`` repair what is safe; Dagster's side if ``instance``.

    The database's side is ``drift_repair.find_and_repair``'s; the partitions, which live
    in the instance, are repaired here, and only when the instance is trusted.
    """
    facts_of = None if instance is None else functools.partial(dagster_facts, instance, now)
    findings, facts = drift_repair.find_and_repair(
        engine, facts_of, now=now, limits=limits, fix=fix
    )
    if not fix or instance is None or facts is None or not facts.trusted:
        return findings
    for finding in findings:
        if finding.kind == "partition_missing":
            keys = finding.ids
            instance.add_dynamic_partitions(SCHEDULE_PARTITIONS_NAME, keys)
        elif finding.kind == "partition_orphaned":
            keys = finding.ids
            for key in keys:
                instance.delete_dynamic_partition(SCHEDULE_PARTITIONS_NAME, key)
        else:
            continue
        with engine.begin() as conn:
            drift_repair.record_partition_repairs(conn, finding, keys, now=now)
    return findings


class ReconcileConfig(dg.Config):
    """Whether the hourly run repairs what is safe, or only reports."""

    fix: bool = True


@dg.op
def reconcile_drift(
    context: dg.OpExecutionContext,
    config: ReconcileConfig,
    database: DatabaseResource,
    clock: ClockResource,
    schedule_limits: ScheduleLimitsResource,
) -> dg.Output[list[dict[str, Any]]]:
    """Compare the schedules database with Dagster; repair what is safe; report the rest."""
    findings = reconcile(
        database.engine(),
        context.instance,
        now=clock.now(),
        limits=schedule_limits.limits(),
        fix=config.fix,
    )
    left = [f for f in findings if len(f.repaired) < f.count]
    for finding in findings:
        log = context.log.warning if finding in left else context.log.info
        log(
            f"{finding.kind}: {finding.count} ({finding.detail}); "
            f"repaired {len(finding.repaired)}; {finding.repair}"
        )
    return dg.Output(
        [f.as_dict() for f in findings],
        metadata={
            "findings": len(findings),
            "left_for_a_person": len(left),
            "by_kind": dg.MetadataValue.json(
                {f.kind: {"count": f.count, "repaired": len(f.repaired)} for f in findings}
            ),
            "report": dg.MetadataValue.md(
                "\n".join(
                    f"- **{f.kind}** ({f.count}, repaired {len(f.repaired)}): {f.detail}; "
                    f"{f.repair}"
                    for f in findings
                )
                or "no drift"
            ),
        },
    )


@dg.job
def reconcile_job() -> None:
    """Repair drift between the schedules database and Dagster (hourly)."""
    reconcile_drift()


reconcile_schedule = dg.ScheduleDefinition(
    name="reconcile_hourly",
    job=reconcile_job,
    cron_schedule="17 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def configured_instance(dagster_home: str | None) -> dg.DagsterInstance | None:
    """The Dagster instance of ``DAGSTER_HOME``, or None when none is set (database only)."""
    return dg.DagsterInstance.get() if dagster_home else None
