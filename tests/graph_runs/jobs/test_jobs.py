"""graph_runs.jobs: grant check, execution API call, outcome, counters and receipt.

A lone slot is a dispatch batch of one on its schedule's partition; ad-hoc runs are one run
per request, held to a schedule's checks. A slot whose schedule names another owner's grant
bills nobody. Jobs run in-process on instance_for_test against the real local execution API
over HTTP and a real schedules database.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.access.grants import revoke_grant
from graph_runs.core.money import micros_to_usd
from graph_runs.dispatch.ledger import BILLING_ACCOUNT_TAG
from graph_runs.jobs import graph_run_adhoc_job, graph_run_job
from graph_runs.jobs.dispatch import make_graph_run_job
from graph_runs.jobs.partition_tags import billing_tags
from graph_runs.jobs.partitions import SCHEDULE_PARTITIONS_NAME
from graph_runs.resources import ScheduleLimitsResource
from graph_runs.scheduling.describe import describe_schedule
from graph_runs.scheduling.refire import refire_schedule
from graph_runs.scheduling.schedules import get_schedule
from graph_runs.store.tables import charge_receipts, execution_grants, run_ledger, schedules
from tests.conftest import RunningApi
from tests.dagster_helpers import apply_partitions, events_tick, launch, make_resources, tick
from tests.helpers import at, make_grant, make_schedule

CREATED = at("2026-11-22T10:00:30Z")
NOW = "2026-11-22T10:01:02Z"


def fire_one(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    api: RunningApi,
    scopes: list[str] | None = None,
    **fields: Any,
) -> tuple[dg.ExecuteInProcessResult, dict[str, Any], dg.RunRequest]:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED, scopes=scopes)
        view = make_schedule(conn, CREATED, grant, **fields)
    resources = make_resources(database_url, api, NOW)
    result = tick(instance, resources, None)
    apply_partitions(instance, result)
    (request,) = result.run_requests or []
    return launch(instance, resources, request), view, request


def one(engine: sa.Engine, table: sa.Table) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(table)).one()


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def outcome_event(instance: dg.DagsterInstance, database_url: str) -> Any:
    """The slot's one event on its schedule's partition, as the events sensor announces it."""
    result = events_tick(instance, make_resources(database_url, None, NOW), None)
    assert isinstance(result, dg.SensorResult)
    (event,) = result.asset_events
    assert event.asset_key == dg.AssetKey("scheduled_graph_runs")
    return event


def outcome_metadata(instance: dg.DagsterInstance, database_url: str) -> dict[str, Any]:
    """The slot's event on its schedule's partition of scheduled_graph_runs, as the UI shows it."""
    event = outcome_event(instance, database_url)
    assert isinstance(event, dg.AssetMaterialization)
    return {"partition": event.partition, **event.metadata}


def recorded(run: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """What the dispatch op recorded for the run's one slot."""
    (slot,) = run.output_for_node("dispatch_slots")["recorded"]
    return dict(slot)


def test_a_scheduled_slot_runs_records_and_bills(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    run, view, _ = fire_one(engine, database_url, instance, execution_api, max_cost_usd="0.5")
    assert run.success
    row = one(engine, run_ledger)
    receipt = one(engine, charge_receipts)
    assert (row.status, row.dagster_run_id, row.api_run_id) == (
        "succeeded",
        run.run_id,
        receipt.api_run_id,
    )
    assert row.output == {"echo": {"topic": "news"}}
    assert (receipt.graph_run_id, receipt.schedule_id, receipt.billing_account) == (
        row.id,
        view["id"],
        "alice-billing",
    )
    metadata = recorded(run)
    assert metadata["status"] == "succeeded" and metadata["receipt_written"] is True
    entries = outcome_metadata(instance, database_url)
    assert entries["partition"] == view["id"] and entries["ledger_id"].value == row.id
    assert (entries["status"].value, entries["attempt"].value) == ("succeeded", 1)
    assert entries["api_run_id"].value == receipt.api_run_id
    assert entries["tokens"].value == receipt.total_tokens
    assert entries["cost_usd"].value == str(micros_to_usd(receipt.cost_micros))
    assert entries["over_budget"].value is False and row.over_budget is False
    # The run that fired it, linked from the event (issue 22).
    assert entries["run"].value == run.run_id


def test_a_run_that_costs_more_than_max_cost_is_flagged_over_budget(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    # The demo API reports its cost and does not stop at the limit: exactly the case to flag.
    run, _, _ = fire_one(engine, database_url, instance, execution_api, max_cost_usd="0.000001")
    assert run.success
    row = one(engine, run_ledger)
    receipt = one(engine, charge_receipts)
    assert receipt.cost_micros > 1 and row.over_budget is True
    assert recorded(run)["over_budget"] is True
    assert outcome_metadata(instance, database_url)["over_budget"].value is True
    with engine.connect() as conn:
        counts = describe_schedule(conn, row.schedule_id, now=at("2026-11-22T10:02:00Z"))["counts"]
    assert counts["over_budget"] == 1


@pytest.mark.parametrize(
    ("scopes", "change", "code"),
    [
        (["graph:execute:echo"], "narrow", "scope_denied"),
        (["graph:execute:echo"], "revoke", "grant_revoked"),
        (["graph:execute:echo"], "expire", "grant_expired"),
        (["graph:execute:echo"], "delete", "grant_missing"),
    ],
)
def test_grant_failures_are_recorded_without_calling_the_api(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    execution_api: RunningApi,
    scopes: list[str],
    change: str | None,
    code: str,
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED, scopes=scopes)
        view = make_schedule(conn, CREATED, grant)
        # Revoked behind revoke_and_pause's back (straight in the table, as another tool
        # might), narrowed there (create refuses a grant that cannot run the graph), or
        # expired: the first run that meets it pauses the schedule.
        if change == "narrow":
            conn.execute(execution_grants.update().values(scopes=["graph:execute:other"]))
        if change == "revoke":
            revoke_grant(conn, grant.id, now=CREATED, by="security")
        if change == "expire":
            conn.execute(execution_grants.update().values(expires_at=at("2026-11-22T10:00:45Z")))
        if change == "delete":
            conn.execute(execution_grants.delete())
    resources = make_resources(database_url, execution_api, NOW)
    result = tick(instance, resources, None)
    apply_partitions(instance, result)
    run = launch(instance, resources, (result.run_requests or [])[0])
    # Its failure is the slot's outcome, recorded: the run did its work (issue 22).
    assert run.success
    row = one(engine, run_ledger)
    assert (row.status, row.error_code) == ("failed", code)
    assert execution_api.store.executions == 0 and count(engine, charge_receipts) == 0
    # Issue 22: a slot refused at its fire wrote no event; its partition now says why.
    event = outcome_event(instance, database_url)
    assert isinstance(event, dg.AssetObservation)
    assert (event.asset_key, event.partition) == (dg.AssetKey("scheduled_graph_runs"), view["id"])
    assert (event.metadata["status"].value, event.metadata["error"].value) == ("failed", code)
    assert event.metadata["reason"].value == row.error_message
    assert event.metadata["run"].value == run.run_id
    with engine.connect() as conn:
        assert conn.execute(sa.select(schedules.c.runs_failed)).scalar_one() == 1
        state = get_schedule(conn, view["id"])
    if change == "narrow":
        # Out of scope is a per-graph mistake, left to pause-after-failures.
        assert state["enabled"]
    else:
        # A dead grant fails every slot the same way: the schedule pauses, saying why.
        assert not state["enabled"] and state["paused_by"] == "graph-runs (grant)"
        assert state["pause_note"].startswith(f"grant {grant.id}: {code}: grant {grant.id} ")


@pytest.mark.parametrize("code", ["grant_revoked", "scope_denied"])
def test_a_403_from_the_apis_own_grant_check_is_recorded_and_not_retried(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    execution_api: RunningApi,
    code: str,
) -> None:
    """Our grant says yes, the API's re-check says no (revoked on its side, say)."""
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant)
    execution_api.store.refused_grants[grant.id] = code
    resources = make_resources(database_url, execution_api, NOW)
    result = tick(instance, resources, None)
    apply_partitions(instance, result)
    run = launch(instance, resources, (result.run_requests or [])[0])
    # Its failure is the slot's outcome, recorded: the run did its work (issue 22).
    assert run.success
    row = one(engine, run_ledger)
    assert (row.status, row.error_code, row.api_run_id) == ("failed", code, None)
    assert (execution_api.store.refusals, execution_api.store.executions) == (1, 0)
    assert count(engine, charge_receipts) == 0
    with engine.connect() as conn:
        state = get_schedule(conn, view["id"])
    # Revoked pauses the grant's schedules, as our own check would; out of scope does not.
    assert state["enabled"] is (code == "scope_denied")


def test_a_failed_graph_is_recorded_failed_and_still_billed_in_a_green_run(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    run, _, _ = fire_one(engine, database_url, instance, execution_api, graph_id="fail")
    # Its failure is the slot's outcome, recorded: the run did its work (issue 22).
    assert run.success
    row = one(engine, run_ledger)
    assert (row.status, row.error_code) == ("failed", "graph_failed")
    assert count(engine, charge_receipts) == 1


def test_re_executing_a_slot_never_executes_or_bills_twice(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    first, _, request = fire_one(engine, database_url, instance, execution_api)
    second = launch(instance, make_resources(database_url, execution_api, NOW), request)
    assert first.success and second.success
    assert execution_api.store.executions == 1
    assert count(engine, charge_receipts) == 1
    with engine.connect() as conn:
        totals = conn.execute(sa.select(schedules.c.runs_total, schedules.c.runs_succeeded)).one()
    assert tuple(totals) == (1, 1)


def test_api_outage_is_recorded_and_refired_succeeds_once_where_re_execution_fires_nothing(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    run, view, request = fire_one(
        engine, database_url, instance, execution_api, graph_id="flaky", input={"failures": 3}
    )
    # Three attempts, three 503s: recorded as api_unavailable.
    # Its failure is the slot's outcome, recorded: the run did its work (issue 22).
    assert run.success
    assert one(engine, run_ledger).error_code == "api_unavailable"
    # Re-executing the run (Dagster tags it with its parent) fires nothing: the run may have
    # fired other owners' slots, and each failure is an outcome.
    resources = make_resources(database_url, execution_api, NOW)
    again = launch(
        instance,
        resources,
        request.with_replaced_attrs(tags={**request.tags, "dagster/parent_run_id": run.run_id}),
    )
    assert again.success
    row = one(engine, run_ledger)
    assert (row.status, row.dagster_run_id) == ("failed", run.run_id)
    assert execution_api.store.executions == 0
    # A person refires it: the sensor's next tick fires it in a batch of its own.
    with engine.begin() as conn:
        report = refire_schedule(
            conn, view["id"], start=at("2026-11-22T10:00:00Z"), end=at(NOW), now=at(NOW)
        )
    assert (report["failed"], report["refired"]) == (1, 1)
    (refired,) = tick(instance, resources, None).run_requests or []
    assert refired.run_key != request.run_key
    fired = launch(instance, resources, refired)
    assert fired.success
    row = one(engine, run_ledger)
    assert (row.status, row.dagster_run_id) == ("succeeded", fired.run_id)
    with engine.connect() as conn:
        counts = conn.execute(sa.select(schedules.c.runs_succeeded, schedules.c.runs_failed)).one()
    assert tuple(counts) == (1, 0)
    assert execution_api.store.executions == 1 and count(engine, charge_receipts) == 1


def test_adhoc_runs_with_one_key_execute_once(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
    config = {
        "ops": {
            "check_grant": {
                "config": {
                    "idempotency_key": "req-42",
                    "graph_id": "echo",
                    "grant_id": grant.id,
                    "input": {"q": "now"},
                    "requested_by": "ops@example.com",
                }
            }
        }
    }
    resources = make_resources(database_url, execution_api, NOW)
    runs = [
        graph_run_adhoc_job.execute_in_process(
            run_config=config,
            instance=instance,
            resources=resources,
            tags={BILLING_ACCOUNT_TAG: "alice-billing"},
        )
        for _ in range(2)
    ]
    assert all(r.success for r in runs)
    assert execution_api.store.executions == 1 and count(engine, charge_receipts) == 1
    row = one(engine, run_ledger)
    assert (row.idempotency_key, row.trigger_kind, row.requested_by) == (
        "api:req-42",
        "api",
        "ops@example.com",
    )
    tags = instance.get_run_by_id(runs[0].run_id).tags  # type: ignore[union-attr]
    assert tags["graph_runs/ledger_id"] == row.id and tags["graph_runs/owner"] == "alice"


def test_a_single_run_may_live_as_long_as_its_timeout_allows(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    # Run monitoring's max_runtime_seconds (2 h) would kill a run that polls a day-long
    # API run, and leave it without its receipt: the run carries its own bound.
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
    request = {
        "idempotency_key": "req-9",
        "graph_id": "echo",
        "grant_id": grant.id,
        "timeout_seconds": 86_400,
    }
    run = graph_run_adhoc_job.execute_in_process(
        run_config={"ops": {"check_grant": {"config": request}}},
        instance=instance,
        resources=make_resources(database_url, execution_api, NOW),
        tags={BILLING_ACCOUNT_TAG: "alice-billing"},
    )
    tags = instance.get_run_by_id(run.run_id).tags  # type: ignore[union-attr]
    assert tags["dagster/max_runtime"] == str(86_400 + 2 * 600)


@pytest.mark.parametrize("claimed", [None, "mallory-billing"], ids=["untagged", "another's"])
def test_an_adhoc_run_not_tagged_with_its_grants_account_is_refused_before_any_row(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    execution_api: RunningApi,
    claimed: str | None,
) -> None:
    # The queue's per-account limit counted this run under the tag it was submitted with:
    # none, or an account whose limit it should not use.
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
    request = {"idempotency_key": "req-7", "graph_id": "echo", "grant_id": grant.id}
    run = graph_run_adhoc_job.execute_in_process(
        run_config={"ops": {"check_grant": {"config": request}}},
        instance=instance,
        resources=make_resources(database_url, execution_api, NOW),
        tags={} if claimed is None else {BILLING_ACCOUNT_TAG: claimed},
        raise_on_error=False,
    )
    assert not run.success
    (failure,) = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"{BILLING_ACCOUNT_TAG}=alice-billing" in str(failure.event_specific_data)
    assert count(engine, run_ledger) == 0 and execution_api.store.executions == 0


def test_a_partition_run_from_the_ui_is_submitted_with_the_account_its_schedule_bills(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    # The definitions' job, as the launchpad and the backfill daemon use it: Dagster asks
    # it for the partition's tags and submits the run with them, before the queue.
    with engine.begin() as conn:
        schedule_id = make_schedule(conn, CREATED, make_grant(conn, CREATED))["id"]
    instance.add_dynamic_partitions(SCHEDULE_PARTITIONS_NAME, [schedule_id])
    job = make_graph_run_job(billing_tags(lambda: database_url))
    tags = job.get_tags_for_partition_key(schedule_id, selected_asset_keys=None)
    assert tags[BILLING_ACCOUNT_TAG] == "alice-billing"
    run = job.execute_in_process(
        instance=instance,
        partition_key=schedule_id,
        resources=make_resources(database_url, execution_api, NOW),
        tags=tags,
    )
    assert run.success and execution_api.store.executions == 1


def test_a_partition_tag_is_left_out_where_the_account_is_unknown(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    # Unknown schedule, or no database: the launch form still opens (no tag), and the op
    # refuses the untagged run, naming the tag.
    assert billing_tags(lambda: database_url)("sch_gone") == {}
    (tmp_path / "a-folder.db").mkdir()  # SQLite cannot open it: an outage, as it sees it
    assert billing_tags(lambda: f"sqlite:///{tmp_path / 'a-folder.db'}")("sch_gone") == {}


@pytest.mark.parametrize("claimed", [None, "mallory-billing"], ids=["untagged", "another's"])
def test_a_partition_run_without_its_accounts_tag_is_refused(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    execution_api: RunningApi,
    claimed: str | None,
) -> None:
    # A GraphQL caller sets a partition run's tags itself: with none, or another account's,
    # the run went past its own account's queue limit.
    with engine.begin() as conn:
        schedule_id = make_schedule(conn, CREATED, make_grant(conn, CREATED))["id"]
    instance.add_dynamic_partitions(SCHEDULE_PARTITIONS_NAME, [schedule_id])
    run = graph_run_job.execute_in_process(
        instance=instance,
        partition_key=schedule_id,
        resources=make_resources(database_url, execution_api, NOW),
        tags={} if claimed is None else {BILLING_ACCOUNT_TAG: claimed},
        raise_on_error=False,
    )
    assert not run.success and execution_api.store.executions == 0
    assert count(engine, run_ledger) == 0
    (failure,) = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"{BILLING_ACCOUNT_TAG}=alice-billing" in str(failure.event_specific_data)


@pytest.mark.parametrize("neighbours", [0, 2], ids=["alone", "in a batch"])
def test_a_schedule_naming_another_owners_grant_fails_without_calling_the_api(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    execution_api: RunningApi,
    neighbours: int,
) -> None:
    with engine.begin() as conn:
        alices = make_grant(conn, CREATED)
        for _ in range(neighbours):
            make_schedule(conn, CREATED, alices)
        stolen = make_schedule(conn, CREATED, alices)
        # Another application writes mallory in as the owner of a schedule on alice's grant.
        conn.execute(
            schedules.update().where(schedules.c.id == stolen["id"]).values(owner="mallory")
        )
    resources = make_resources(database_url, execution_api, NOW)
    result = tick(instance, resources, None)
    apply_partitions(instance, result)
    (request,) = result.run_requests or []
    run = launch(instance, resources, request)
    # Its failure is the slot's outcome, recorded: the run did its work (issue 22).
    assert run.success
    with engine.connect() as conn:
        rows = {r.schedule_id: r for r in conn.execute(sa.select(run_ledger))}
    assert (rows[stolen["id"]].status, rows[stolen["id"]].error_code) == (
        "failed",
        "grant_not_owner",
    )
    # alice's own schedules fire; mallory's bills nobody.
    assert execution_api.store.executions == neighbours == count(engine, charge_receipts)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"graph_id": ".."}, "graph_id"),
        ({"graph_id": "echo/../../admin"}, "graph_id"),
        ({"input": {"blob": "x" * 200}}, "input"),
        ({"input": {"deep": json.loads("[" * 40 + "]" * 40)}}, "input"),  # 41 levels
        ({"max_cost_usd": "1e20"}, "max_cost_usd"),
    ],
)
def test_adhoc_requests_are_held_to_the_checks_of_a_schedule(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    execution_api: RunningApi,
    change: dict[str, Any],
    field: str,
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
    request = {"idempotency_key": "req-1", "graph_id": "echo", "grant_id": grant.id, **change}
    resources = {
        **make_resources(database_url, execution_api, NOW),
        "schedule_limits": ScheduleLimitsResource(max_input_bytes=100),
    }
    run = graph_run_adhoc_job.execute_in_process(
        run_config={"ops": {"check_grant": {"config": request}}},
        instance=instance,
        resources=resources,
        tags={BILLING_ACCOUNT_TAG: "alice-billing"},
        raise_on_error=False,
    )
    assert not run.success
    (failure,) = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"refused: {field}:" in str(failure.event_specific_data)
    assert count(engine, run_ledger) == 0 and execution_api.store.executions == 0
