"""``last_slot_ok``: a partitioned check that fails on a schedule whose last slot failed.

Why a check and not a failed materialization: in Dagster 1.13 a partition reads as failed
only when its latest planned materialization belongs to a run that failed, and a dispatch
run is red only when dispatch failed (a slot's failure is its outcome, not the run's). So
the Catalog's Failed is this check's, on the schedule's partition: it fails when the
schedule's latest outcome is ``failed`` or ``missed``, and passes on any other.

Why in a run: Dagster's storage takes one reported (runless) result per partition and
check, and refuses the second (tests/graph_runs/sensors/test_slot_events_sensor.py pins
it). So the slot events sensor asks for a small run, ``last_slot_checks``, for the
schedules whose latest outcome is not a success; it judges each one from the ledger, at
its own time, against the partition's latest materialization. A later success needs no
run: its materialization makes the older result stale, and the partition reads
materialized. The run's config only says which schedules to judge; the verdicts come from
the ledger, so a launch from the UI can re-judge but never forge one.
"""

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluation,
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.event_api import AssetRecordsFilter
from dagster._core.events import DagsterEventType

from graph_runs.core.ledger_rows import slot_label
from graph_runs.core.statuses import FAILED, FINAL, MISSED, SUCCEEDED
from graph_runs.core.text import bounded
from graph_runs.jobs.partitions import SLOT_ASSET_KEY, schedule_partitions
from graph_runs.resources import DatabaseResource
from graph_runs.scheduling.describe import recent_actions

LAST_SLOT_CHECK = "last_slot_ok"
LAST_SLOT_CHECKS_JOB = "last_slot_checks"
NOT_OK = frozenset({FAILED, MISSED})
MAX_REASON = 300


def latest_outcomes(conn: sa.Connection, schedule_ids: Collection[str]) -> dict[str, Any]:
    """Each schedule's latest ledger row with an outcome, in ``describe``'s order."""
    found = recent_actions(conn, schedule_ids, 1, statuses=FINAL)
    return {schedule_id: rows[0] for schedule_id, rows in found.items()}


def needs_judging(latest: Mapping[str, Any], taken: Sequence[Any]) -> list[str]:
    """The schedules of ``taken`` rows whose check a run must judge now.

    Those whose latest outcome is not a success: a success is judged by its own
    materialization. Without a latest row (not read), a taken row that is not a success.
    """
    ids: set[str] = set()
    for row in taken:
        if not row.schedule_id:
            continue
        last = latest.get(row.schedule_id)
        status = last.status if last is not None else row.status
        if status != SUCCEEDED:
            ids.add(row.schedule_id)
    return sorted(ids)


def verdict(row: Any | None) -> tuple[bool, str, dict[str, Any]]:
    """Whether a schedule's latest outcome is ok, why, and the metadata that shows it."""
    if row is None:
        return True, "no slot of this schedule has an outcome yet", {}
    slot = slot_label(row)
    reason = bounded(" ".join(filter(None, [row.error_code, row.error_message])), MAX_REASON)
    metadata: dict[str, Any] = {
        "slot": slot,
        "status": row.status,
        "reason": reason or "",
        "ledger_id": row.id,
    }
    if row.dagster_run_id:
        metadata["run"] = dg.MetadataValue.dagster_run(row.dagster_run_id)
    passed = row.status not in NOT_OK
    said = f"last slot {slot}: {row.status}" + (f" ({reason})" if reason else "")
    return passed, said, metadata


def _latest_materializations(
    instance: dg.DagsterInstance, partitions: Collection[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    # What each result judges: a result aimed at an older materialization reads as stale.
    key = dg.AssetKey(SLOT_ASSET_KEY)
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        key, DagsterEventType.ASSET_MATERIALIZATION, set(partitions)
    )
    if not latest:
        return {}
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values())), limit=len(latest)
    ).records
    by_id = {record.storage_id: record for record in records}
    return {
        partition: AssetCheckEvaluationTargetMaterializationData(
            storage_id=storage_id,
            run_id=by_id[storage_id].run_id,
            timestamp=by_id[storage_id].timestamp,
        )
        for partition, storage_id in latest.items()
        if storage_id in by_id
    }


def evaluations(
    instance: dg.DagsterInstance, database: DatabaseResource, schedule_ids: Collection[str]
) -> list[AssetCheckEvaluation]:
    """The check's result on each schedule's partition, judged from the ledger now."""
    ids = sorted(set(schedule_ids))
    with database.engine().connect() as conn:
        latest = latest_outcomes(conn, ids)
    targets = _latest_materializations(instance, ids)
    results = []
    for schedule_id in ids:
        passed, said, metadata = verdict(latest.get(schedule_id))
        results.append(
            AssetCheckEvaluation(
                asset_key=dg.AssetKey(SLOT_ASSET_KEY),
                check_name=LAST_SLOT_CHECK,
                passed=passed,
                partition=schedule_id,
                description=said,
                metadata=metadata,
                severity=dg.AssetCheckSeverity.ERROR,
                target_materialization_data=targets.get(schedule_id),
            )
        )
    return results


@dg.asset_check(
    asset=SLOT_ASSET_KEY,
    name=LAST_SLOT_CHECK,
    partitions_def=schedule_partitions,
    description=(
        "The schedule's latest slot outcome is not failed or missed. Judged by the "
        "last_slot_checks run the slot events sensor asks for; executing it here judges "
        "one schedule again, from the ledger."
    ),
)
def last_slot_ok(
    context: dg.AssetCheckExecutionContext, database: DatabaseResource
) -> dg.AssetCheckResult:
    """One partition, judged as the sensor's run judges it."""
    with database.engine().connect() as conn:
        latest = latest_outcomes(conn, [context.partition_key])
    passed, said, metadata = verdict(latest.get(context.partition_key))
    return dg.AssetCheckResult(
        passed=passed, description=said, metadata=metadata, severity=dg.AssetCheckSeverity.ERROR
    )


class LastSlotChecksConfig(dg.Config):
    """Which schedules to judge: a launch can choose them, never their verdicts."""

    schedule_ids: list[str]


@dg.op(description="Judges last_slot_ok on each schedule's partition, from the ledger.")
def judge_last_slots(
    context: dg.OpExecutionContext, config: LastSlotChecksConfig, database: DatabaseResource
) -> None:
    """Logs each result as this run's: Dagster keeps every run's, where it keeps one runless."""
    results = evaluations(context.instance, database, config.schedule_ids)
    for result in results:
        # Typed narrower than it is: log_event takes check evaluations too.
        context.log_event(result)  # type: ignore[arg-type]
    failing = [r.partition for r in results if not r.passed]
    context.log.info(
        f"last_slot_ok judged on {len(results)} schedule(s); failing on {len(failing)}"
        + (f": {' '.join(p for p in failing[:20] if p)}" if failing else "")
    )


@dg.job(
    name=LAST_SLOT_CHECKS_JOB,
    description="Judges last_slot_ok for the schedules the slot events sensor names.",
    tags={"graph_runs/kind": "last_slot_checks"},
)
def last_slot_checks_job() -> None:
    """One op: the judging needs nothing else."""
    judge_last_slots()


def run_request(schedule_ids: Sequence[str], tick: int) -> dg.RunRequest:
    """The run that judges ``schedule_ids``, asked by the events sensor's tick ``tick``.

    No run key: a tick announced again asks again, and a second verdict is as true.
    """
    return dg.RunRequest(
        job_name=LAST_SLOT_CHECKS_JOB,
        run_config=dg.RunConfig(
            ops={"judge_last_slots": LastSlotChecksConfig(schedule_ids=list(schedule_ids))}
        ),
        tags={"graph_runs/events_tick": str(tick)},
    )
