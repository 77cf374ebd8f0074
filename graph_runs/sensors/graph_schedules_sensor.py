"""The sensor that turns users' schedules into Dagster runs, exactly once per slot.

Each tick is a function of its cursor, its resources and the clock:

0. reconcile: in-flight ledger rows whose Dagster run ended without an outcome are settled,
   and runs of paused or deleted schedules (or superseded under overlap cancel_other) are
   cancelled in Dagster; a buffered slot whose schedule has nothing running is released;
1. claim: slots due within the lookahead (the interval plus a launch allowance) go into
   the ledger, ``next_run_at`` advances, and the claimed slots are grouped into dispatch
   batches, all in one transaction (``graph_runs.dispatch.batches``);
2. dispatch: every open batch without a Dagster run gets a run request whose run key is
   ``batch:{id}:{attempt}``, so a tick that died after its commit asks for the same run.
   A batch whose run died (its lease expired) or ended with slots unrecorded moves to its
   next attempt, or after the last one has its slots settled ``dispatch_lost``;
3. partitions: schedules created or deleted since the last tick gain or lose their
   partition, and every hour a full comparison repairs anything else (rows that another
   application deleted outright, say). At most ``MAX_PARTITION_CHANGES`` per tick;
4. polls: API runs that outlived the dispatch run that fired them (handed off) are polled
   once each when due, and what ended is recorded (``graph_runs.dispatch.polling``), in a
   bounded time, so that they hold no place in the run queue.
"""

import asyncio
import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import dagster as dg

from graph_runs.core.cron import format_utc, parse_instant
from graph_runs.dispatch import batch_tags, batches, polling
from graph_runs.dispatch.batches import Batch
from graph_runs.dispatch.reconcile import (
    DAGSTER_NOT_STARTED,
    apply_run_statuses,
    runs_to_reconcile,
)
from graph_runs.dispatch.tick import claim_and_batch
from graph_runs.jobs import SCHEDULE_PARTITIONS_NAME, dispatch_batch_job, graph_run_job
from graph_runs.jobs.partition_tags import resolved_partition_tags
from graph_runs.jobs.run_lookup import existing_batch_runs, run_statuses
from graph_runs.resources import (
    ClockResource,
    DatabaseResource,
    DispatchResource,
    ExecutionApiResource,
    ScheduleLimitsResource,
)
from graph_runs.scheduling.claim import (
    ON_TIME_TOLERANCE,
    TickLimits,
    live_schedule_ids,
    next_due,
    schedules_changed_since,
)
from graph_runs.store import slot_status
from graph_runs.store.db import SchemaError

# Dagster recommends at most 25k partition changes per evaluation; a single add of about
# 30k keys fails on Postgres (65,535 bind parameters).
MAX_PARTITION_CHANGES = 20_000
FULL_PARTITION_SYNC_EVERY = dt.timedelta(hours=1)
# Schedules touched within this margin before the last tick are looked at again, so that a
# row committed late by a slow writer (or written with a skewed clock) is not missed.
CHANGE_MARGIN = dt.timedelta(minutes=5)
MAX_RECONCILED = 2_000
MAX_OPEN_BATCHES = 2_000
# Partition keys checked one by one before falling back to reading them all.
MAX_PARTITION_PROBES = 50


def tick_limits_for(interval_seconds: int, dispatch: DispatchResource) -> TickLimits:
    """Tick limits whose on-time grace (catch-up ``none``) and lookahead follow the interval."""
    return TickLimits(
        on_time_grace=dt.timedelta(seconds=interval_seconds) + ON_TIME_TOLERANCE,
        lookahead=dispatch.lookahead(interval_seconds),
    )


@dataclass(frozen=True)
class SensorCursor:
    """What the sensor remembers between ticks."""

    last_tick: dt.datetime | None = None
    last_full_sync: dt.datetime | None = None

    @classmethod
    def parse(cls, raw: str | None) -> "SensorCursor":
        """Read a cursor; an empty or unreadable one starts over with a full partition sync."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(
                last_tick=parse_instant(data["last_tick"]) if data.get("last_tick") else None,
                last_full_sync=(
                    parse_instant(data["last_full_sync"]) if data.get("last_full_sync") else None
                ),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()

    def serialize(self) -> str:
        """The cursor as Dagster stores it."""
        return json.dumps(
            {
                "last_tick": None if self.last_tick is None else format_utc(self.last_tick),
                "last_full_sync": (
                    None if self.last_full_sync is None else format_utc(self.last_full_sync)
                ),
            },
            sort_keys=True,
        )


def _cancel_run(instance: dg.DagsterInstance, run_id: str, status: str) -> None:
    """Cancel a queued run, or terminate a started one, as the Dagster UI's button does."""
    if status in DAGSTER_NOT_STARTED:
        run = instance.get_run_by_id(run_id)
        if run is not None:
            instance.report_run_canceled(run, message="graph-runs cancelled this run")
        return
    if not instance.run_coordinator.cancel_run(run_id):
        # The run launcher could not reach the run (it may be ending anyway); the row stays
        # `cancelling` and is settled once Dagster reports the run finished.
        raise RuntimeError("the run launcher did not accept the termination request")


def _reconcile(
    context: dg.SensorEvaluationContext, database: DatabaseResource, now: dt.datetime
) -> tuple[int, int]:
    """Step 0; returns how many rows were settled as failed and as cancelled."""
    with database.engine().connect() as conn:
        rows = runs_to_reconcile(conn, MAX_RECONCILED)
    if not rows:
        return 0, 0
    statuses = run_statuses(context.instance, sorted({row.dagster_run_id for row in rows}))
    with database.transaction() as conn:
        done = apply_run_statuses(conn, rows, statuses, now=now)
    if done.handed_off:
        context.log.warning(
            f"{done.handed_off} slot(s) whose run ended in the middle of its call: the API "
            "may have their runs, so they are polled to their end (step 4), not settled"
        )
    cancelled = done.cancelled
    for ledger_id, run_id, status in done.to_cancel:
        try:
            _cancel_run(context.instance, run_id, status)
        except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the tick
            context.log.warning(f"[ledger={ledger_id}] could not cancel run {run_id}: {exc}")
            continue
        context.log.info(f"[ledger={ledger_id}] cancelled Dagster run {run_id} (was {status})")
        with database.transaction() as conn:
            slot_status.settle_cancelled(conn, ledger_id, run_id, now)
        cancelled += 1
    return done.failed, cancelled


def _existing_partitions(
    instance: dg.DagsterInstance, keys: set[str], full: set[str] | None
) -> set[str]:
    """Which of ``keys`` are partitions; every partition on a full sync.

    A tick looks at a few keys (schedules created or deleted since the last one, batches of
    one) one by one, so that its cost does not follow the number of schedules.
    """
    if full is None and len(keys) <= MAX_PARTITION_PROBES:
        return {k for k in keys if instance.has_dynamic_partition(SCHEDULE_PARTITIONS_NAME, k)}
    return set(instance.get_dynamic_partitions(SCHEDULE_PARTITIONS_NAME))


def _plan_partitions(
    instance: dg.DagsterInstance,
    wanted: set[str],
    unwanted: set[str],
    full: set[str] | None,
    also: set[str],
) -> tuple[list[str], list[str], set[str], bool]:
    """Partition keys to add and delete this tick.

    Also returns which of the keys looked at (and ``also``) exist afterwards, and whether
    every change fitted in this tick.
    """
    existing = _existing_partitions(instance, wanted | unwanted | also, full)
    if full is not None:
        wanted = wanted | full
        unwanted = unwanted | (existing - full)
    to_add = sorted(wanted - existing - unwanted)
    to_delete = sorted(unwanted & existing)
    complete = len(to_add) + len(to_delete) <= MAX_PARTITION_CHANGES
    to_add = to_add[:MAX_PARTITION_CHANGES]
    to_delete = to_delete[: MAX_PARTITION_CHANGES - len(to_add)]
    return to_add, to_delete, (existing | set(to_add)) - set(to_delete), complete


def _dispatch(
    context: dg.SensorEvaluationContext,
    database: DatabaseResource,
    dispatch: DispatchResource,
    open_now: list[Batch],
    now: dt.datetime,
) -> tuple[list[Batch], Counter[str]]:
    """Step 2: the batches to request a run for; recovers those whose run is gone."""
    found = existing_batch_runs(context.instance, [b.run_key for b in open_now])
    statuses = run_statuses(context.instance, sorted(set(found.values())))
    to_request: list[Batch] = []
    done: Counter[str] = Counter()
    for batch in open_now:
        run_id = found.get(batch.run_key)
        if run_id is None:
            to_request.append(batch)
            continue
        limits = dispatch.recovery()
        verdict = batches.assess(
            batch, run_id=run_id, run_status=statuses.get(run_id), now=now, limits=limits
        )
        if verdict is None:
            continue
        with database.transaction() as conn:
            moved = batches.recover(conn, batch, verdict, now=now, limits=limits)
        if moved is None:
            continue
        why = moved.why
        done[moved.action] += 1
        if moved.action == "retry":
            to_request.append(batch.next_attempt())
            context.log.warning(
                f"[batch={batch.id}] {why} with {moved.unfinished} slot(s) unrecorded; "
                f"dispatching attempt {batch.attempt + 1}"
            )
        elif moved.action == "cancelled":
            context.log.warning(
                f"[batch={batch.id}] {why}: {moved.unfinished} slot(s) settled cancelled"
            )
        elif moved.action == "lost":
            context.log.error(
                f"[batch={batch.id}] {why}; {moved.unfinished} slot(s) settled "
                f"{batches.DISPATCH_LOST} after {batch.attempt} attempt(s)"
            )
    return to_request, done


# A poll the sensor makes waits this long for an answer at most: the tick has others to make.
POLL_REQUEST_TIMEOUT_SECONDS = 5.0


def _poll(
    database: DatabaseResource,
    execution_api: ExecutionApiResource,
    dispatch: DispatchResource,
    now: dt.datetime,
) -> polling.Polled:
    """Step 4: one poll of each handed-off API run that is due, within a bounded time."""
    caller = replace(
        execution_api.concurrent_caller(
            dispatch.max_concurrent_calls, dispatch.max_calls_per_account
        ),
        request_timeout_seconds=min(
            POLL_REQUEST_TIMEOUT_SECONDS, execution_api.request_timeout_seconds
        ),
    )
    return asyncio.run(polling.poll_handed_off(database.engine(), caller, now=now))


def graph_schedules_tick(
    context: dg.SensorEvaluationContext,
    database: DatabaseResource,
    clock: ClockResource,
    schedule_limits: ScheduleLimitsResource,
    dispatch: DispatchResource,
    tick_limits: TickLimits,
    execution_api: ExecutionApiResource | None = None,
) -> dg.SensorResult | dg.SkipReason:
    """One evaluation of ``graph_schedules_sensor``; see the module docstring."""
    now = clock.now()
    cursor = SensorCursor.parse(context.cursor)
    try:
        database.check_schema()
    except SchemaError as exc:
        return dg.SkipReason(f"not firing anything: {exc}")

    settled_failed, cancelled = _reconcile(context, database, now)
    with database.transaction() as conn:
        claimed = claim_and_batch(
            conn,
            now=now,
            schedule_limits=schedule_limits.limits(),
            tick_limits=tick_limits,
            batch_size=dispatch.batch_size,
            parallel_runs=dispatch.parallel_runs,
            account_batches=dispatch.account_batches,
        )
    released, claim, formed = claimed.released, claimed.claim, claimed.formed
    if claim.cancelled_for_overlap:
        # Overlap cancel_other: stop the older runs now, before the new slot's run is asked
        # for, rather than a tick later.
        more_failed, more_cancelled = _reconcile(context, database, now)
        settled_failed, cancelled = settled_failed + more_failed, cancelled + more_cancelled
    for schedule_id, problem in claim.invalid:
        context.log.error(f"[schedule={schedule_id}] marked error, not fired: {problem}")

    full_sync_due = (
        cursor.last_full_sync is None or now - cursor.last_full_sync >= FULL_PARTITION_SYNC_EVERY
    )
    since = (cursor.last_tick or now) - CHANGE_MARGIN
    with database.engine().connect() as conn:
        open_now = batches.open_batches(conn, MAX_OPEN_BATCHES)
        changed_live, changed_deleted = schedules_changed_since(conn, since)
        full = live_schedule_ids(conn) if full_sync_due else None
        upcoming = next_due(conn)

    to_request, recovered = _dispatch(context, database, dispatch, open_now, now)
    singles = {b.partition_key for b in to_request if b.partition_key}
    to_add, to_delete, partitions, complete = _plan_partitions(
        context.instance, changed_live, changed_deleted, full, singles
    )

    shared: dict[str, dict[str, str]] = {}
    if to_request:
        with database.engine().connect() as conn:
            shared = batch_tags.shared_tags(conn, [b.id for b in to_request])
    run_requests = []
    for batch in to_request:
        tags = {**shared.get(batch.id, {}), **batch.run_tags()}
        label = f"[batch={batch.id} attempt={batch.attempt} slots={batch.size}]"
        due = format_utc(batch.due_at)
        if batch.partition_key and batch.partition_key in partitions:
            context.log.info(f"{label} due {due}: requesting run {batch.run_key} on its schedule")
            run_requests.append(
                dg.RunRequest(
                    run_key=batch.run_key,
                    job_name=graph_run_job.name,
                    partition_key=batch.partition_key,
                    tags={**tags, **resolved_partition_tags(batch.partition_key)},
                )
            )
            continue
        context.log.info(f"{label} due {due}: requesting run {batch.run_key}")
        run_requests.append(
            dg.RunRequest(run_key=batch.run_key, job_name=dispatch_batch_job.name, tags=tags)
        )

    polled = _poll(database, execution_api, dispatch, now) if execution_api else polling.Polled()
    new_cursor = SensorCursor(
        last_tick=now,
        last_full_sync=now if full_sync_due and complete else cursor.last_full_sync,
    )
    partition_requests: list[Any] = []
    if to_add:
        partition_requests.append(
            dg.AddDynamicPartitionsRequest(
                partitions_def_name=SCHEDULE_PARTITIONS_NAME, partition_keys=to_add
            )
        )
    if to_delete:
        partition_requests.append(
            dg.DeleteDynamicPartitionsRequest(
                partitions_def_name=SCHEDULE_PARTITIONS_NAME, partition_keys=to_delete
            )
        )
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(claim.statuses.items()))
    recoveries = ", ".join(f"{n} {action}" for action, n in sorted(recovered.items()))
    summary = (
        f"at {format_utc(now)}: slots {statuses or 'none due'}; {len(formed)} batch(es) formed, "
        f"{len(open_now)} open, {len(run_requests)} run request(s)"
        f"{'; batches recovered: ' + recoveries if recoveries else ''}; "
        f"{len(released)} buffered released; {settled_failed} run(s) settled failed and "
        f"{cancelled} cancelled; {len(claim.invalid)} invalid schedule(s); "
        f"+{len(to_add)}/-{len(to_delete)} partition(s); handed-off API runs polled: "
        f"{polled.ended} ended, {polled.still_going} going, {polled.given_up} given up"
        f"{f', {polled.failed_to_record} not recorded' if polled.failed_to_record else ''}"
    )
    context.log.info(summary)
    if run_requests or partition_requests:
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=partition_requests,
            cursor=new_cursor.serialize(),
        )
    if claim.statuses:
        reason = f"no run to request at {format_utc(now)}: slots {statuses}"
    elif open_now:
        reason = f"no run to request at {format_utc(now)}: {len(open_now)} batch(es) being fired"
    else:
        reason = f"no schedule is due at {format_utc(now)}"
    if upcoming is None:
        reason += " and none is active"
    else:
        reason += f"; next due: schedule {upcoming[0]} at {format_utc(upcoming[1])}"
    return dg.SensorResult(skip_reason=reason, cursor=new_cursor.serialize())


def make_graph_schedules_sensor(
    minimum_interval_seconds: int, partition_job: dg.JobDefinition = graph_run_job
) -> dg.SensorDefinition:
    """The sensor, with its interval from ``GRAPH_RUNS_SENSOR_INTERVAL_SECONDS``.

    ``partition_job`` is the definitions' own ``graph_run_job`` (``make_graph_run_job``).
    """

    @dg.sensor(
        name="graph_schedules_sensor",
        jobs=[partition_job, dispatch_batch_job],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Claims user schedules' slots ahead of their instant into the run ledger, groups "
            "them into dispatch batches and requests one run per batch (run key "
            "batch:{id}:{attempt}); re-dispatches a batch whose run died."
        ),
    )
    def graph_schedules_sensor(
        context: dg.SensorEvaluationContext,
        database: DatabaseResource,
        clock: ClockResource,
        schedule_limits: ScheduleLimitsResource,
        dispatch: DispatchResource,
        execution_api: ExecutionApiResource,
    ) -> dg.SensorResult | dg.SkipReason:
        return graph_schedules_tick(
            context,
            database,
            clock,
            schedule_limits,
            dispatch,
            tick_limits_for(minimum_interval_seconds, dispatch),
            execution_api,
        )

    return graph_schedules_sensor
