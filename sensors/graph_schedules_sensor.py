"""The sensor that turns users' schedules into Dagster runs, exactly once per slot.

Each tick is a function of its cursor, its resources and the clock:

0. reconcile: in-flight ledger rows whose Dagster run ended without an outcome are settled,
   and runs of paused or deleted schedules (or superseded under overlap cancel_other) are
   cancelled in Dagster; a buffered slot whose schedule has nothing running is released;
1. claim: due slots go into the ledger and ``next_run_at`` advances, in one transaction;
2. emit: every ``pending`` ledger row without a Dagster run gets a run request whose run
   key is the slot's idempotency key. Rows claimed by a tick that died before Dagster
   created their runs are simply emitted again; the run key makes that safe;
3. partitions: schedules created or deleted since the last tick gain or lose their
   partition, and every hour a full comparison repairs anything else (rows that another
   application deleted outright, say). At most ``MAX_PARTITION_CHANGES`` per tick.
"""

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import dagster as dg

from graph_runs import ledger, slot_status
from graph_runs.core.cron import format_utc, parse_instant
from graph_runs.db import SchemaError
from graph_runs.in_flight import release_buffered
from graph_runs.jobs import SCHEDULE_PARTITIONS_NAME, graph_run_job
from graph_runs.reconcile import (
    DAGSTER_NOT_STARTED,
    apply_run_statuses,
    runs_to_reconcile,
)
from graph_runs.slots import (
    ON_TIME_TOLERANCE,
    TickLimits,
    claim_due_slots,
    live_schedule_ids,
    next_due,
    pending_runs,
    schedules_changed_since,
)
from resources import ClockResource, DatabaseResource, ScheduleLimitsResource
from sensors.run_lookup import existing_runs, run_statuses

# Dagster recommends at most 25k partition changes per evaluation; a single add of about
# 30k keys fails on Postgres (65,535 bind parameters).
MAX_PARTITION_CHANGES = 20_000
FULL_PARTITION_SYNC_EVERY = dt.timedelta(hours=1)
# Schedules touched within this margin before the last tick are looked at again, so that a
# row committed late by a slow writer (or written with a skewed clock) is not missed.
CHANGE_MARGIN = dt.timedelta(minutes=5)
MAX_RECONCILED = 2_000
DEFAULT_TICK_LIMITS = TickLimits()


def tick_limits_for(interval_seconds: int) -> TickLimits:
    """Tick limits whose on-time grace (catch-up ``none``) follows the sensor's interval."""
    return TickLimits(on_time_grace=dt.timedelta(seconds=interval_seconds) + ON_TIME_TOLERANCE)


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


def _plan_partitions(
    instance: dg.DagsterInstance,
    wanted: set[str],
    unwanted: set[str],
    full: set[str] | None,
) -> tuple[list[str], list[str], set[str], bool]:
    """Partition keys to add and delete this tick.

    Also returns the keys that exist afterwards and whether every change fitted in this tick.
    """
    existing = set(instance.get_dynamic_partitions(SCHEDULE_PARTITIONS_NAME))
    if full is not None:
        wanted = wanted | full
        unwanted = unwanted | (existing - full)
    to_add = sorted(wanted - existing - unwanted)
    to_delete = sorted(unwanted & existing)
    complete = len(to_add) + len(to_delete) <= MAX_PARTITION_CHANGES
    to_add = to_add[:MAX_PARTITION_CHANGES]
    to_delete = to_delete[: MAX_PARTITION_CHANGES - len(to_add)]
    return to_add, to_delete, (existing | set(to_add)) - set(to_delete), complete


def graph_schedules_tick(
    context: dg.SensorEvaluationContext,
    database: DatabaseResource,
    clock: ClockResource,
    schedule_limits: ScheduleLimitsResource,
    tick_limits: TickLimits = DEFAULT_TICK_LIMITS,
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
        released = release_buffered(conn)
        claim = claim_due_slots(
            conn, now=now, schedule_limits=schedule_limits.limits(), tick_limits=tick_limits
        )
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
        pending = pending_runs(conn, tick_limits.max_pending)
        changed_live, changed_deleted = schedules_changed_since(conn, since)
        full = live_schedule_ids(conn) if full_sync_due else None
        upcoming = next_due(conn)

    found = existing_runs(context.instance, [row.id for row in pending])
    if found:
        with database.transaction() as conn:
            slot_status.mark_queued(conn, found)
    to_emit = [row for row in pending if row.id not in found]

    wanted = changed_live | {row.schedule_id for row in to_emit if row.schedule_id}
    to_add, to_delete, partitions, complete = _plan_partitions(
        context.instance, wanted, changed_deleted, full
    )

    run_requests = []
    held = 0
    for row in to_emit:
        slot = format_utc(row.scheduled_for) if row.scheduled_for else row.trigger_kind
        label = f"[schedule={row.schedule_id} owner={row.owner} slot={slot}]"
        if row.schedule_id not in partitions:
            held += 1
            context.log.warning(f"{label} held until its partition exists (next tick)")
            continue
        context.log.info(f"{label} requesting run {row.idempotency_key} (ledger {row.id})")
        run_requests.append(
            dg.RunRequest(
                run_key=row.idempotency_key,
                partition_key=row.schedule_id,
                tags=ledger.run_tags(row),
            )
        )

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
    summary = (
        f"at {format_utc(now)}: slots {statuses or 'none due'}; {len(released)} buffered "
        f"released; {settled_failed} run(s) settled failed and {cancelled} cancelled; "
        f"{len(claim.invalid)} invalid schedule(s), {len(found)} already had runs, "
        f"{len(run_requests)} run request(s), {held} held, "
        f"+{len(to_add)}/-{len(to_delete)} partition(s)"
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
    else:
        reason = f"no schedule is due at {format_utc(now)}"
    if upcoming is None:
        reason += " and none is active"
    else:
        reason += f"; next due: schedule {upcoming[0]} at {format_utc(upcoming[1])}"
    return dg.SensorResult(skip_reason=reason, cursor=new_cursor.serialize())


def make_graph_schedules_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    """The sensor, with its interval from ``GRAPH_RUNS_SENSOR_INTERVAL_SECONDS``."""
    tick_limits = tick_limits_for(minimum_interval_seconds)

    @dg.sensor(
        name="graph_schedules_sensor",
        job=graph_run_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Reads due user schedules from the schedules table, writes each slot to the run "
            "ledger and requests one run per slot (run key sched:{schedule}:{slot})."
        ),
    )
    def graph_schedules_sensor(
        context: dg.SensorEvaluationContext,
        database: DatabaseResource,
        clock: ClockResource,
        schedule_limits: ScheduleLimitsResource,
    ) -> dg.SensorResult | dg.SkipReason:
        return graph_schedules_tick(context, database, clock, schedule_limits, tick_limits)

    return graph_schedules_sensor
