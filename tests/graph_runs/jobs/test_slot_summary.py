"""jobs.slot_summary: whose schedule a slot event is on, and its last ten slots.

Issue 22: a partition read as a raw schedule id, and a schedule's history was a dialog
without slot, status or cost. Slots are fired by the real dispatch op in-process against
the real local execution API and a real schedules database (SQLite file and PostgreSQL).
"""

import dagster as dg
import sqlalchemy as sa

from graph_runs.core.money import micros_to_usd
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.jobs.slot_summary import schedule_summaries
from graph_runs.scheduling.triggers import backfill_schedule
from graph_runs.store.tables import charge_receipts, execution_grants, run_ledger
from tests.conftest import RunningApi
from tests.dagster_helpers import apply_partitions, events_tick, launch, make_resources, tick
from tests.helpers import at, make_grant, make_schedule

CREATED = at("2026-11-22T10:00:30Z")


def _last_event(instance: dg.DagsterInstance, resources: dict) -> dict:
    # What the slot events sensor announces once the run has recorded its slots.
    result = events_tick(instance, resources, None)
    assert isinstance(result, dg.SensorResult) and result.asset_events
    return {k: v.value for k, v in result.asset_events[-1].metadata.items()}


def test_each_slot_event_says_whose_schedule_it_is_and_shows_its_last_ten_slots(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="0 * * * *", timezone="Europe/Berlin")
        # Twelve past hours to run now: more than the table holds.
        backfill_schedule(
            conn,
            view["id"],
            start=at("2026-11-21T22:00:00Z"),
            end=at("2026-11-22T09:00:00Z"),
            now=CREATED,
            limits=ScheduleLimits(),
        )
    resources = make_resources(database_url, execution_api, "2026-11-22T10:00:32Z")
    result = tick(instance, resources, None)
    apply_partitions(instance, result)
    (request,) = result.run_requests or []
    run = launch(instance, resources, request)
    assert run.success and execution_api.store.executions == 12
    event = _last_event(instance, resources)
    assert (event["owner"], event["graph_id"]) == ("alice", "echo")
    assert (event["timing"], event["timezone"]) == ("0 * * * *", "Europe/Berlin")
    table = event["last_slots"].splitlines()
    assert table[0] == "| slot | status | reason | cost USD | run |"
    rows = table[2:]
    # Newest first, ten of the twelve, each with its cost and a link to the run.
    assert len(rows) == 10
    assert rows[0].startswith("| 2026-11-22T09:00:00Z | succeeded |")
    assert rows[-1].startswith("| 2026-11-22T00:00:00Z | succeeded |")
    assert all(f"](/runs/{run.run_id}) |" in r for r in rows)
    newest = (
        sa.select(charge_receipts.c.cost_micros)
        .join(run_ledger, run_ledger.c.id == charge_receipts.c.graph_run_id)
        .where(run_ledger.c.scheduled_for == at("2026-11-22T09:00:00Z"))
    )
    with engine.connect() as conn:
        cost = micros_to_usd(conn.execute(newest).scalar_one())
    assert f"| succeeded |  | {cost} |" in rows[0]


def test_a_failed_slots_reason_shows_in_the_table_and_cannot_break_it(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED, scopes=["graph:execute:echo"])
        view = make_schedule(conn, CREATED, grant)
        conn.execute(execution_grants.update().values(scopes=["graph:execute:other"]))
    resources = make_resources(database_url, execution_api, "2026-11-22T10:01:02Z")
    result = tick(instance, resources, None)
    apply_partitions(instance, result)
    run = launch(instance, resources, (result.run_requests or [])[0])
    assert run.success
    event = _last_event(instance, resources)
    (row,) = event["last_slots"].splitlines()[2:]
    assert row.startswith("| 2026-11-22T10:01:00Z | failed | scope_denied ")
    # A reason with a pipe and a newline stays in its cell, on its row.
    with engine.begin() as conn:
        conn.execute(run_ledger.update().values(error_message="a | b\nc"))
        (summary,) = schedule_summaries(conn, [view["id"]]).values()
    (row,) = summary["last_slots"].value.splitlines()[2:]
    assert "| failed | scope_denied a \\| b\\nc |" in row


def test_a_schedule_deleted_before_its_event_has_no_summary(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        view = make_schedule(conn, CREATED, make_grant(conn, CREATED))
        assert schedule_summaries(conn, [view["id"], "sch_gone"]).keys() == {view["id"]}
        assert schedule_summaries(conn, []) == {}
