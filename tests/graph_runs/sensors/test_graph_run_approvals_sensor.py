"""sensors.graph_run_approvals_sensor: approved slots run once, rejected and timed-out never do.

A refused launch by hand is never taken for the approved slot's own.

Both sensors are evaluated with build_sensor_context on instance_for_test, a real schedules
database (SQLite file and PostgreSQL) and a fixed clock; the runs requested are executed
in-process against the real local execution API, as the daemon would launch them.
"""

from decimal import Decimal

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.approvals import decisions as approvals
from graph_runs.money.budgets import set_budget
from graph_runs.scheduling.schedules import pause_schedule
from graph_runs.sensors.graph_run_approvals_sensor import APPROVAL_ID_TAG, APPROVED_BY_TAG
from graph_runs.store.tables import charge_receipts, run_ledger
from tests.conftest import RunningApi
from tests.dagster_helpers import (
    apply_partitions,
    approvals_tick,
    daemon_run,
    launch,
    make_resources,
    tick,
)
from tests.helpers import at, make_grant, make_schedule

CREATED = at("2026-11-22T10:00:30Z")
DUE = "2026-11-22T10:01:02Z"


def gated_slot(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, **fields
) -> dict:
    """A requires-approval schedule whose first slot came due; returns its approval."""
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        make_schedule(
            conn, CREATED, grant, requires_approval=True, run_at=at("2026-11-22T10:01:00Z"),
            cron=None, **fields,
        )  # fmt: skip
    result = tick(instance, make_resources(database_url, None, DUE), None)
    assert result.run_requests == []  # a gated slot asks for no run by itself
    apply_partitions(instance, result)
    with engine.connect() as conn:
        (approval,) = approvals.list_approvals(conn)
    return approval


def decide(engine: sa.Engine, approval_id: str, decision: str, by: str = "bob") -> dict:
    with engine.begin() as conn:
        return approvals.decide(conn, approval_id, decision, by=by, now=at(DUE))  # type: ignore[arg-type]


def ledger_row(engine: sa.Engine) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(sa.select(run_ledger)).one()


def test_approved_slot_launches_once_with_approved_by_and_bills_once(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    approval = gated_slot(engine, database_url, instance)
    resources = make_resources(database_url, execution_api, "2026-11-22T10:05:00Z")
    waiting = approvals_tick(instance, resources)
    assert isinstance(waiting, dg.SkipReason)
    assert "1 pending, the first times out at 2026-11-23T10:01:02Z" in (waiting.skip_message or "")

    decide(engine, approval["id"], "approve")
    result = approvals_tick(instance, resources)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests or []
    assert request.run_key == approval["id"]
    assert request.partition_key == approval["schedule_id"]
    assert request.tags[APPROVED_BY_TAG] == "bob"
    assert request.tags[APPROVAL_ID_TAG] == approval["id"]
    # The slot keeps its usual idempotency key: the API sees the request any slot would send.
    slot_key = f"sched:{approval['schedule_id']}:2026-11-22T10:01:00Z"
    assert request.tags["graph_runs/idempotency_key"] == slot_key

    # A second tick before Dagster made the run asks again under the same run key (deduped).
    again = approvals_tick(instance, resources)
    assert isinstance(again, dg.SensorResult)
    assert [r.run_key for r in again.run_requests or []] == [approval["id"]]

    run = launch(instance, resources, request)
    assert run.success
    dagster_run = instance.get_run_by_id(run.run_id)
    assert dagster_run is not None and dagster_run.tags[APPROVED_BY_TAG] == "bob"
    row = ledger_row(engine)
    assert (row.status, row.idempotency_key, row.dagster_run_id) == (
        "succeeded",
        slot_key,
        run.run_id,
    )
    with engine.connect() as conn:
        (receipt,) = conn.execute(sa.select(charge_receipts)).all()
    assert (receipt.graph_run_id, receipt.dagster_run_id) == (row.id, run.run_id)
    assert len(execution_api.store.runs) == 1

    after = approvals_tick(instance, resources)
    assert isinstance(after, dg.SkipReason) and "1 already launched" in (after.skip_message or "")
    with engine.connect() as conn:
        launched = approvals.get_approval(conn, approval["id"])
    assert (launched["dagster_run_id"], launched["run_status"]) == (run.run_id, "succeeded")
    assert isinstance(approvals_tick(instance, resources), dg.SkipReason)


def test_two_approved_slots_whose_runs_exist_are_marked_launched_in_one_tick(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    # Found by the fault simulator: marking two launches at once (an executemany over an
    # IN list) raised, so the sensor's every tick crashed on the same two approvals.
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        for _ in range(2):
            make_schedule(
                conn, CREATED, grant, requires_approval=True,
                run_at=at("2026-11-22T10:01:00Z"), cron=None,
            )  # fmt: skip
    apply_partitions(instance, tick(instance, make_resources(database_url, None, DUE), None))
    with engine.connect() as conn:
        pending = approvals.list_approvals(conn)
    assert len(pending) == 2
    for approval in pending:
        decide(engine, approval["id"], "approve")
    resources = make_resources(database_url, None, DUE)
    result = approvals_tick(instance, resources)
    assert isinstance(result, dg.SensorResult)
    runs = {r.run_key: daemon_run(instance, r).run_id for r in result.run_requests or []}
    assert len(runs) == 2

    after = approvals_tick(instance, resources)
    assert isinstance(after, dg.SkipReason) and "2 already launched" in (after.skip_message or "")
    with engine.connect() as conn:
        rows = {r.dagster_run_id: r.status for r in conn.execute(sa.select(run_ledger))}
    assert rows == {run_id: "queued" for run_id in runs.values()}


def test_rejected_slot_never_calls_the_api(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    approval = gated_slot(engine, database_url, instance)
    decide(engine, approval["id"], "reject")
    result = approvals_tick(instance, make_resources(database_url, execution_api, DUE))
    assert isinstance(result, dg.SkipReason)
    assert (ledger_row(engine).status, instance.get_runs_count()) == ("rejected", 0)
    assert execution_api.store.runs == {}


@pytest.mark.parametrize(
    ("on_timeout", "status", "requests"),
    [("skip", "skipped_unapproved", 0), ("approve", "awaiting_approval", 1)],
)
def test_timeout_follows_on_timeout(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    on_timeout: str,
    status: str,
    requests: int,
) -> None:
    approval = gated_slot(
        engine,
        database_url,
        instance,
        approval_timeout_seconds=3600,
        on_approval_timeout=on_timeout,
    )
    early = approvals_tick(instance, make_resources(database_url, None, "2026-11-22T11:01:01Z"))
    assert isinstance(early, dg.SkipReason)
    result = approvals_tick(instance, make_resources(database_url, None, "2026-11-22T11:01:02Z"))
    runs = result.run_requests if isinstance(result, dg.SensorResult) else []
    assert len(runs or []) == requests
    assert ledger_row(engine).status == status
    if runs:
        assert runs[0].tags[APPROVED_BY_TAG] == approvals.TIMEOUT_DECIDER
        assert runs[0].run_key == approval["id"]


def test_slot_approved_then_paused_before_launch_never_runs(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    approval = gated_slot(engine, database_url, instance)
    decide(engine, approval["id"], "approve")
    with engine.begin() as conn:
        pause_schedule(conn, approval["schedule_id"], now=at(DUE), note="stop", by="ana")
    result = approvals_tick(instance, make_resources(database_url, None, DUE))
    assert isinstance(result, dg.SkipReason)
    assert ledger_row(engine).status == "cancelled"
    with engine.connect() as conn:
        assert approvals.get_approval(conn, approval["id"])["status"] == "cancelled"


def test_slot_approved_after_its_account_reached_the_budget_is_skipped_budget(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance
) -> None:
    approval = gated_slot(engine, database_url, instance)
    with engine.begin() as conn:
        set_budget(
            conn, billing_account="alice-billing", period="month", limit_usd=Decimal(0),
            now=at(DUE),
        )  # fmt: skip
    decide(engine, approval["id"], "approve")
    result = approvals_tick(instance, make_resources(database_url, None, DUE))
    assert isinstance(result, dg.SkipReason)
    row = ledger_row(engine)
    assert (row.status, row.dagster_run_id) == ("skipped_budget", None)
    assert "has spent 0 USD of its 0 USD budget" in row.error_message
    with engine.connect() as conn:
        settled = approvals.get_approval(conn, approval["id"])
    assert (settled["status"], settled["run_status"]) == ("approved", "skipped_budget")
    assert isinstance(
        approvals_tick(instance, make_resources(database_url, None, DUE)), dg.SkipReason
    )


def test_a_refused_hand_launch_is_not_taken_for_the_approved_slots_launch(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    approval = gated_slot(engine, database_url, instance)
    resources = make_resources(database_url, execution_api, "2026-11-22T10:05:00Z")
    row = ledger_row(engine)
    # Someone launches the gated slot by hand, with its ledger tag: refused, as it must be.
    by_hand = dg.RunRequest(
        run_key=None,
        partition_key=approval["schedule_id"],
        tags={"graph_runs/ledger_id": row.id},
    )
    refused = launch(instance, resources, by_hand)
    assert not refused.success
    decide(engine, approval["id"], "approve")
    result = approvals_tick(instance, resources)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests or []
    assert request.tags[APPROVAL_ID_TAG] == approval["id"]
    assert launch(instance, resources, request).success
    assert ledger_row(engine).status == "succeeded"
    assert len(execution_api.store.runs) == 1
