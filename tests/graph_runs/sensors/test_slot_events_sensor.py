"""sensors.slot_events_sensor and jobs.slot_events: every slot outcome, announced once.

Issue 22: a slot that never fired (paused, skipped, missed, cancelled) left no trace on
its schedule's partition, and the dispatch op's own events cost a burst 39% of its rate.
Outcomes are made by the real paths (the dispatch op in-process against the real local
execution API, resume's record of paused slots, ledger.record_outcome) on a real SQLite
file and PostgreSQL; the sensor is evaluated as the daemon would, with its cursor carried
from tick to tick or, for a tick Dagster never committed, not.
"""

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.dispatch import ledger
from graph_runs.execution_api.client import Outcome
from graph_runs.resources import DispatchResource
from graph_runs.store.tables import run_ledger
from tests.conftest import RunningApi
from tests.dagster_helpers import (
    events_tick,
    fire_three_owners,
    make_resources,
)
from tests.helpers import at

NOW = "2026-11-22T10:01:02Z"


def _by_partition(result: dg.SensorResult | dg.SkipReason) -> dict[str, list]:
    assert isinstance(result, dg.SensorResult), result
    found: dict[str, list] = {}
    for event in result.asset_events:
        assert event.asset_key == dg.AssetKey("scheduled_graph_runs")
        found.setdefault(event.partition, []).append(event)
    return found


def _marks(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(run_ledger.c.status, run_ledger.c.announce_tick)))


def test_every_outcome_is_announced_on_its_partition_with_its_run_and_reason(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    resources, alice, bob, carol = fire_three_owners(engine, database_url, instance, execution_api)
    found = _by_partition(events_tick(instance, resources, None))
    assert found.keys() == {alice["id"], bob["id"], carol["id"]}
    (succeeded,) = found[alice["id"]]
    assert isinstance(succeeded, dg.AssetMaterialization)
    meta = {k: v.value for k, v in succeeded.metadata.items()}
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(run_ledger).where(run_ledger.c.schedule_id == alice["id"])
        ).one()
    assert (meta["status"], meta["slot"], meta["ledger_id"]) == (
        "succeeded",
        "2026-11-22T10:01:00Z",
        row.id,
    )
    assert meta["run"] == row.dagster_run_id and meta["api_run_id"] == row.api_run_id
    assert meta["cost_usd"] != "0" and meta["tokens"] > 0 and meta["owner"] == "alice"
    (failed,) = found[bob["id"]]
    assert isinstance(failed, dg.AssetObservation)
    assert failed.metadata["status"].value == "failed"
    assert failed.metadata["error"].value == "scope_denied"
    assert "has no scope graph:execute:echo" in failed.metadata["reason"].value
    # Slots that never fired are outcomes too: each is on the partition, oldest first, so
    # that the partition's latest event is its last slot.
    paused = found[carol["id"]]
    assert [e.metadata["status"].value for e in paused] == ["skipped_paused"] * 3
    assert [e.metadata["slot"].value for e in paused] == [
        "2026-11-22T10:01:00Z",
        "2026-11-22T10:02:00Z",
        "2026-11-22T10:03:00Z",
    ]
    assert all("run" not in e.metadata for e in paused)


def test_each_outcome_is_announced_once_and_again_only_if_its_tick_was_lost(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    resources, *_ = fire_three_owners(engine, database_url, instance, execution_api)
    first = events_tick(instance, resources, None)
    assert isinstance(first, dg.SensorResult) and first.cursor == "1"
    announced = len(first.asset_events)
    assert announced == 5
    # Dagster never committed tick 1 (the daemon died before its cursor): the next tick has
    # the old cursor, and announces the same outcomes again, no fewer and no more.
    again = events_tick(instance, resources, None)
    assert isinstance(again, dg.SensorResult) and again.cursor == "1"
    assert [e.metadata["ledger_id"] for e in again.asset_events] == [
        e.metadata["ledger_id"] for e in first.asset_events
    ]
    # Committed: nothing is news, and the marks are cleared, leaving the index empty.
    quiet = events_tick(instance, resources, "1")
    assert isinstance(quiet, dg.SkipReason) and "since tick 1" in (quiet.skip_message or "")
    assert {mark for _, mark in _marks(engine)} == {None}
    assert isinstance(events_tick(instance, resources, "1"), dg.SkipReason)


def test_a_failed_slot_that_later_succeeds_is_announced_again(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    resources, _, bob, _ = fire_three_owners(engine, database_url, instance, execution_api)
    assert isinstance(events_tick(instance, resources, None), dg.SensorResult)
    with engine.begin() as conn:
        row = conn.execute(sa.select(run_ledger).where(run_ledger.c.schedule_id == bob["id"])).one()
        ledger.record_outcome(
            conn,
            row.id,
            Outcome(status="succeeded", api_run_id="run_late", output={"ok": True}),
            dagster_run_id="dagster-late",
            now=at("2026-11-22T10:05:00Z"),
        )
    later = events_tick(instance, resources, "1")
    found = _by_partition(later)
    ((event,),) = found.values()
    assert isinstance(event, dg.AssetMaterialization) and event.partition == bob["id"]
    assert event.metadata["run"].value == "dagster-late"


def test_a_tick_takes_at_most_its_cap_oldest_first_and_the_rest_next_tick(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    resources, *_ = fire_three_owners(engine, database_url, instance, execution_api)
    cursor, ids, ticks = None, [], 0
    while ticks < 6:
        result = events_tick(instance, resources, cursor, max_per_tick=2)
        if isinstance(result, dg.SkipReason):
            break
        ticks += 1
        cursor = result.cursor
        for events in _by_partition(result).values():
            ids.extend(e.metadata["ledger_id"].value for e in events)
    # 2 + 2 + 1 outcomes, then nothing.
    assert len(ids) == len(set(ids)) == 5 and (ticks, cursor) == (3, "3")


def test_with_slot_events_off_outcomes_are_passed_over_without_events(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    resources, *_ = fire_three_owners(engine, database_url, instance, execution_api)
    off = {**resources, "dispatch": DispatchResource(slot_asset_events=False)}
    result = events_tick(instance, off, None)
    assert isinstance(result, dg.SensorResult) and not result.asset_events
    assert result.cursor == "1" and "GRAPH_RUNS_SLOT_ASSET_EVENTS=false" in str(result.skip_reason)
    # Turned on again later, the outcomes passed over stay history.
    assert isinstance(events_tick(instance, resources, "1"), dg.SkipReason)


def test_an_unmigrated_database_skips_naming_the_command(
    tmp_path, instance: dg.DagsterInstance
) -> None:
    resources = make_resources(f"sqlite:///{tmp_path / 'empty.db'}", None, NOW)
    result = events_tick(instance, resources, None)
    assert isinstance(result, dg.SkipReason)
    assert "graph-runs db upgrade" in (result.skip_message or "")


def test_dagster_storage_refuses_a_second_runless_check_result_on_one_partition(
    instance: dg.DagsterInstance,
) -> None:
    # Why last_slot_ok is judged in a run and not reported by the sensor
    # (graph_runs/jobs/last_slot_check.py): Dagster 1.13 stores a reported (runless)
    # result under run id '' and a unique index on (asset, check, run id, partition), so
    # the second result on a partition fails to write, and a sensor reporting it would fail
    # every tick. When this test fails, Dagster has fixed it, and the run can go.
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluation,
    )

    instance.add_dynamic_partitions("graph_run_schedules", ["sch_x"])
    result = AssetCheckEvaluation(
        asset_key=dg.AssetKey("scheduled_graph_runs"),
        check_name="last_slot_ok",
        passed=False,
        partition="sch_x",
    )
    instance.report_runless_asset_event(result)
    with pytest.raises(sa.exc.IntegrityError):
        instance.report_runless_asset_event(result)
