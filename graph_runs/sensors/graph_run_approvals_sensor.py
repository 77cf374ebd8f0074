"""The sensor that carries decided approvals to their outcome.

Each tick is a function of the approvals table, Dagster's runs and the clock (no cursor):

1. timeouts: pending approvals past their expiry follow their schedule's on-timeout
   (``skip`` settles the slot ``skipped_unapproved``, ``approve`` approves it);
2. launch: each approved approval without a run gets a run request for ``graph_run_job``,
   whose run key is the approval id, so that however often it is asked for, and however
   many times it was decided, Dagster creates one run. The ledger row keeps the slot's
   usual idempotency key, so the execution API sees the same request as for any slot.
   An approval whose run Dagster already has is marked launched instead, and one whose
   billing account reached its budget meanwhile is recorded ``skipped_budget``.

Rejections need no tick: the decision itself settles the slot ``rejected``.
"""

import datetime as dt
from typing import Any

import dagster as dg

from graph_runs.approvals import gate as approval_gate
from graph_runs.core.cron import format_utc
from graph_runs.dispatch import ledger
from graph_runs.jobs import SCHEDULE_PARTITIONS_NAME, graph_run_job
from graph_runs.jobs.partition_tags import resolved_partition_tags
from graph_runs.jobs.run_lookup import existing_runs_tagged
from graph_runs.resources import ClockResource, DatabaseResource
from graph_runs.store.db import SchemaError

MAX_TIMEOUTS_PER_TICK = 1_000
MAX_LAUNCHES_PER_TICK = 500
APPROVED_BY_TAG = f"{ledger.TAG_PREFIX}approved_by"
APPROVAL_ID_TAG = f"{ledger.TAG_PREFIX}approval_id"


def approval_tags(approval: Any, ledger_row: Any) -> dict[str, str]:
    """The slot's usual run tags, plus who approved it and through which approval."""
    return {
        **ledger.run_tags(ledger_row),
        APPROVED_BY_TAG: approval.decided_by,
        APPROVAL_ID_TAG: approval.id,
    }


def _launches(
    context: dg.SensorEvaluationContext, database: DatabaseResource, now: dt.datetime
) -> tuple[list[dg.RunRequest], int, int]:
    """Step 2: run requests, and how many approvals were found launched or closed."""
    with database.engine().connect() as conn:
        candidates = approval_gate.to_launch(conn, MAX_LAUNCHES_PER_TICK)
    if not candidates:
        return [], 0, 0
    # Only a run this sensor asked for (tagged with the approval) is the approval's launch:
    # a run launched by hand with the slot's ledger tag was refused, and must not stand in.
    by_approval = existing_runs_tagged(
        context.instance, APPROVAL_ID_TAG, [approval.id for approval, _ in candidates]
    )
    found = {row.id: by_approval[a.id] for a, row in candidates if a.id in by_approval}
    with database.transaction() as conn:
        plan = approval_gate.plan_launches(conn, candidates, found, now)
    for approval_id in plan.over_budget:
        context.log.warning(f"[approval={approval_id}] not launched: its account is at its budget")
    requests = []
    for approval, row in plan.to_request:
        label = (
            f"[schedule={row.schedule_id} owner={row.owner} slot={format_utc(row.scheduled_for)} "
            f"approval={approval.id}]"
        )
        if not context.instance.has_dynamic_partition(SCHEDULE_PARTITIONS_NAME, row.schedule_id):
            context.log.warning(f"{label} held until its schedule's partition exists")
            continue
        context.log.info(f"{label} approved by {approval.decided_by}; requesting its run")
        requests.append(
            dg.RunRequest(
                run_key=approval.id,
                partition_key=row.schedule_id,
                # Resolved: Dagster would retag it with the account of the schedule's grant
                # today, not the slot's own (jobs.partition_tags).
                tags={**approval_tags(approval, row), **resolved_partition_tags(row.schedule_id)},
            )
        )
    return requests, plan.launched, plan.closed


def graph_run_approvals_tick(
    context: dg.SensorEvaluationContext, database: DatabaseResource, clock: ClockResource
) -> dg.SensorResult | dg.SkipReason:
    """One evaluation of ``graph_run_approvals_sensor``; see the module docstring."""
    now = clock.now()
    try:
        database.check_schema()
    except SchemaError as exc:
        return dg.SkipReason(f"not launching anything: {exc}")
    with database.transaction() as conn:
        timed_out = approval_gate.settle_timeouts(conn, now, MAX_TIMEOUTS_PER_TICK)
    for status, count in sorted(timed_out.items()):
        context.log.info(f"{count} approval(s) timed out and were {status} (on-timeout)")
    requests, launched, closed = _launches(context, database, now)
    if requests:
        return dg.SensorResult(run_requests=requests)
    with database.engine().connect() as conn:
        pending, first = approval_gate.next_expiry(conn)
    timeouts = ", ".join(f"{n} {status}" for status, n in sorted(timed_out.items()))
    reason = (
        f"no approved slot to launch at {format_utc(now)}"
        + (f"; timed out: {timeouts}" if timeouts else "")
        + (f"; {launched} already launched" if launched else "")
        + (f"; {closed} closed (slot no longer waiting)" if closed else "")
        + f"; {pending} pending"
    )
    if first is not None:
        reason += f", the first times out at {format_utc(first.expires_at)} ({first.id})"
    return dg.SkipReason(reason)


def make_graph_run_approvals_sensor(
    minimum_interval_seconds: int, partition_job: dg.JobDefinition = graph_run_job
) -> dg.SensorDefinition:
    """The sensor, on the same interval as the schedules sensor, launching ``partition_job``."""

    @dg.sensor(
        name="graph_run_approvals_sensor",
        job=partition_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Launches slots that a human approved (run key = approval id) and applies "
            "on-timeout to approvals nobody decided in time."
        ),
    )
    def graph_run_approvals_sensor(
        context: dg.SensorEvaluationContext, database: DatabaseResource, clock: ClockResource
    ) -> dg.SensorResult | dg.SkipReason:
        return graph_run_approvals_tick(context, database, clock)

    return graph_run_approvals_sensor
