"""jobs.last_slot_check: a schedule whose last slot failed reads as failed in the Catalog.

Issue 22: a schedule whose every slot failed read as grey "Missing", never as failed. The
slot events sensor asks for a last_slot_checks run for the schedules whose latest outcome
is not a success; the run judges last_slot_ok on their partitions, and Dagster's storage
holds each result against the partition's latest materialization. Slots are fired by the
real dispatch op in-process against the real local execution API, on a real SQLite file
and PostgreSQL; the check run is executed in-process on the same Dagster instance.
"""

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.event_api import PartitionKeyFilter

from graph_runs.core.statuses import FAILED, FINAL, MISSED, SUCCEEDED
from graph_runs.jobs.last_slot_check import (
    LAST_SLOT_CHECK,
    LAST_SLOT_CHECKS_JOB,
    last_slot_checks_job,
    needs_judging,
    verdict,
)
from tests.conftest import RunningApi
from tests.dagster_helpers import (
    apply_events,
    events_tick,
    fire_three_owners,
)
from tests.helpers import at

CHECK_KEY = dg.AssetCheckKey(dg.AssetKey("scheduled_graph_runs"), LAST_SLOT_CHECK)


def _check_states(instance: dg.DagsterInstance) -> dict[str, tuple[str, bool]]:
    # What the UI's partition statuses are built from: each partition's latest result,
    # and whether it judges the partition's latest materialization.
    infos = instance.event_log_storage.get_asset_check_partition_info([CHECK_KEY])
    return {i.partition_key: (i.latest_execution_status.value, i.is_current) for i in infos}


def _judge(instance: dg.DagsterInstance, resources: dict, request: dg.RunRequest) -> None:
    assert request.job_name == LAST_SLOT_CHECKS_JOB
    result = last_slot_checks_job.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        resources={"database": resources["database"]},
        tags=request.tags,
    )
    assert result.success


def test_a_failed_schedule_is_failed_by_its_check_and_the_others_are_left_alone(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    # Alice's slot succeeds, Bob's fails scope_denied, Carol's were skipped while paused.
    resources, alice, bob, carol = fire_three_owners(engine, database_url, instance, execution_api)

    announced = events_tick(instance, resources, None)
    assert isinstance(announced, dg.SensorResult)
    # A success is judged by its own materialization: only Bob's and Carol's need a run.
    (request,) = announced.run_requests or []
    ids = request.run_config["ops"]["judge_last_slots"]["config"]["schedule_ids"]
    assert sorted(ids) == sorted([bob["id"], carol["id"]])
    apply_events(instance, announced)
    _judge(instance, resources, request)
    states = _check_states(instance)
    assert states == {bob["id"]: ("FAILED", True), carol["id"]: ("SUCCEEDED", True)}

    # Judged again (a tick announced twice, or a launch from the UI): Dagster keeps the
    # run's result beside the first, where it refused a second runless one.
    _judge(instance, resources, request)
    assert _check_states(instance)[bob["id"]] == ("FAILED", True)
    (latest,) = instance.event_log_storage.get_asset_check_execution_history(
        CHECK_KEY, limit=1, partition_filter=PartitionKeyFilter(key=bob["id"])
    )
    evaluation = latest.event.dagster_event.event_specific_data  # type: ignore[union-attr]
    assert evaluation.metadata["status"].value == "failed"
    assert "scope_denied" in evaluation.metadata["reason"].value
    assert evaluation.metadata["run"].value

    # Bob's next slot succeeds: its materialization leaves the failure stale, no run needed.
    instance.report_runless_asset_event(
        dg.AssetMaterialization("scheduled_graph_runs", partition=bob["id"])
    )
    assert _check_states(instance)[bob["id"]] == ("FAILED", False)
    assert alice["id"] not in _check_states(instance)


class _Row:
    def __init__(self, status: str, schedule_id: str = "sch_a") -> None:
        self.status, self.schedule_id = status, schedule_id
        self.error_code = "api_error" if status == FAILED else None
        self.error_message = None
        self.scheduled_for, self.trigger_kind = at("2026-11-22T10:01:00Z"), "scheduled"
        self.id, self.dagster_run_id = "run_1", None


@pytest.mark.parametrize("status", sorted(FINAL))
def test_only_a_failed_or_missed_last_slot_fails_the_check(status: str) -> None:
    passed, said, metadata = verdict(_Row(status))
    assert passed is (status not in {FAILED, MISSED})
    assert status in said and metadata["status"] == status


def test_a_success_taken_after_a_later_slot_failed_is_judged_again() -> None:
    # The latest outcome is the one that counts, whichever of them was taken this tick.
    taken = [_Row(SUCCEEDED, "sch_a"), _Row(SUCCEEDED, "sch_b"), _Row(FAILED, "sch_c")]
    latest = {"sch_a": _Row(FAILED, "sch_a"), "sch_b": _Row(SUCCEEDED, "sch_b")}
    assert needs_judging(latest, taken) == ["sch_a", "sch_c"]
    assert verdict(None)[0] is True
