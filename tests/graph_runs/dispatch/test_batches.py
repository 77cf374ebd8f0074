"""graph_runs.dispatch.batches: a batch's slots are never given up on, or undone, wrongly.

Issue 21: ``dispatch_lost`` settled slots whose API run was still going (A3); a cancel while
a call was in flight abandoned a paid API run (A4); a person's cancel of a dispatch run in
Dagster was retried as a fault, three times, and then counted as failures (A10).

Slots are claimed by the real sensor tick into a real database on each backend, dispatch
runs execute in-process against the real local execution API over HTTP (its ``sleep``
graph runs until the test moves the API's clock), and runs are cancelled through Dagster's
own instance API, as the UI's button does.
"""

import asyncio
import datetime as dt
from typing import Any

import dagster as dg
import sqlalchemy as sa

from graph_runs.dispatch import batches, polling
from graph_runs.dispatch.dispatcher import Dispatcher, DispatchLimits
from graph_runs.execution_api.concurrent_calls import ConcurrentCaller
from graph_runs.scheduling.schedules import pause_schedule
from graph_runs.store.tables import charge_receipts, dispatch_batches, run_ledger
from tests.conftest import RunningApi
from tests.dagster_helpers import apply_partitions, daemon_run, launch, make_resources, tick
from tests.helpers import at, make_grant, make_schedule

LATE = at("2026-11-22T10:00:05Z")  # an every-minute schedule's first slot is 10:01


def the_row(engine: sa.Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(run_ledger)).one()


def receipts(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(charge_receipts)).scalar_one()


def the_batch(engine: sa.Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(dispatch_batches)).one()


def long_slot(engine: sa.Engine, *, timeout_seconds: int = 1, seconds: int = 30) -> dict[str, Any]:
    """A slot at 10:01 whose API run takes ``seconds``; polls give up after ``timeout_seconds``."""
    with engine.begin() as conn:
        grant = make_grant(conn, LATE, scopes=["graph:execute:sleep"])
        return make_schedule(
            conn,
            LATE,
            grant,
            graph_id="sleep",
            input={"seconds": seconds},
            timeout_seconds=timeout_seconds,
            jitter_seconds=0,
        )


def fast_polls(resources: dict[str, Any]) -> dict[str, Any]:
    resources["execution_api"] = resources["execution_api"].model_copy(
        update={"poll_interval_seconds": 0.05}
    )
    return resources


def test_a_slot_whose_api_run_may_still_run_is_polled_past_the_last_attempt(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    """Review defect A3: ``dispatch_lost`` settled a slot whose API run was still going.

    Nothing polled it again: when it succeeded it had no receipt, stayed ``failed`` and
    counted towards the pause streak.
    """
    long_slot(engine)
    resources = fast_polls(make_resources(database_url, execution_api, "2026-11-22T10:00:30Z"))
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    (request,) = first.run_requests or []
    for attempt in range(1, batches.DEFAULT_MAX_ATTEMPTS + 1):
        run = launch(instance, resources, request)  # each poll gives up after 1 s
        assert not run.success
        assert the_row(engine).status == "running" and the_row(engine).api_run_id
        instance.report_run_failed(instance.get_run_by_id(run.run_id))  # type: ignore[arg-type]
        (request,) = tick(instance, resources, None).run_requests or []
        assert request.run_key == f"batch:{the_batch(engine).id}:{attempt + 1}"
    # Past the last attempt, the slot is polled on: its API run ends, and is recorded.
    execution_api.store.clock.now += 60
    assert launch(instance, resources, request).success
    row = the_row(engine)
    assert (row.status, row.error_code) == ("succeeded", None)
    assert receipts(engine) == 1 and execution_api.store.executions == 1


def _past_the_last_attempt(engine: sa.Engine, **row: Any) -> tuple[str, str]:
    """Three attempts died; ``row``'s values set; redispatched within, then past the bound.

    The slot (10:01, 1 s timeout) is polled on until 10:11:01; returns both verdicts.
    """
    with engine.begin() as conn:
        conn.execute(dispatch_batches.update().values(attempt=batches.DEFAULT_MAX_ATTEMPTS))
        conn.execute(
            run_ledger.update().values(
                status="running", started_at=at("2026-11-22T10:01:00Z"), **row
            )
        )
        batch = batches.Batch.from_row(conn.execute(sa.select(dispatch_batches)).one())
        within = batches.redispatch(conn, batch, now=at("2026-11-22T10:11:00Z"), why="died")
        batch = batches.Batch.from_row(conn.execute(sa.select(dispatch_batches)).one())
        past = batches.redispatch(conn, batch, now=at("2026-11-22T10:11:02Z"), why="died")
    return within.action, past.action


def _sensor_polls(engine: sa.Engine, api: RunningApi, now: str) -> polling.Polled:
    """Step 4 of a sensor tick at ``now``: the polls of handed-off slots."""
    caller = ConcurrentCaller(api.url, api.token)
    return asyncio.run(polling.poll_handed_off(engine, caller, now=at(now)))


def _fired_as_r1_past_its_bound(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, api: RunningApi
) -> None:
    """A long slot claimed, then fired as API run ``r-1`` by a last attempt that died.

    1 s timeout + 10 min margin: polled on at 10:11:00, handed to one last poll after.
    """
    long_slot(engine)
    resources = fast_polls(make_resources(database_url, api, "2026-11-22T10:00:30Z"))
    apply_partitions(instance, tick(instance, resources, None))
    assert _past_the_last_attempt(engine, api_run_id="r-1") == ("retry", "lost")


def test_a_slot_is_given_up_on_once_its_timeout_and_a_margin_have_passed_and_a_poll_said_nothing(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    _fired_as_r1_past_its_bound(engine, database_url, instance, execution_api)
    row = the_row(engine)
    assert (row.status, row.poll_after) == ("running", at("2026-11-22T10:11:02Z"))
    # The API knows no run r-1: the poll says nothing, and the slot is given up on.
    assert _sensor_polls(engine, execution_api, "2026-11-22T10:11:02Z").given_up == 1
    row = the_row(engine)
    assert (row.status, row.error_code, row.api_run_id) == ("failed", "dispatch_lost", "r-1")


def test_past_its_bound_a_slot_is_not_given_up_while_the_api_cannot_be_asked(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    # Found by the fault simulator (SQLite seed 20, a clock jump): the one poll after the
    # host woke hit a 503, and the slot was given up though its API run had ended, paid.
    _fired_as_r1_past_its_bound(engine, database_url, instance, execution_api)
    down = RunningApi(
        url="http://127.0.0.1:9", token=execution_api.token, store=execution_api.store
    )
    assert _sensor_polls(engine, down, "2026-11-22T10:11:02Z").still_going == 1
    assert _sensor_polls(engine, down, "2026-11-22T11:11:00Z").still_going == 1
    assert the_row(engine).status == "running"
    # An hour past its bound with no answer at all (and its next poll due), it is given up,
    # its id kept.
    assert _sensor_polls(engine, down, "2026-11-22T11:11:30Z").given_up == 1
    assert (the_row(engine).error_code, the_row(engine).api_run_id) == ("dispatch_lost", "r-1")


def test_a_slot_past_its_bound_whose_api_run_ended_is_billed_after_one_poll(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    """Found by the fault simulator (a clock jump, PostgreSQL seed 4): billed, not lost.

    A host that slept past a slot's bound woke to give it up unpolled, and its API run,
    which had ended and been paid for, was never billed.
    """
    long_slot(engine)
    resources = fast_polls(make_resources(database_url, execution_api, "2026-11-22T10:00:30Z"))
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    (request,) = first.run_requests or []
    assert not launch(instance, resources, request).success  # accepted; 1 s polls gave up
    accepted = the_row(engine).api_run_id
    execution_api.store.clock.now += 60  # the API run ends while the host sleeps
    assert _past_the_last_attempt(engine, api_run_id=accepted) == ("retry", "lost")
    assert _sensor_polls(engine, execution_api, "2026-11-22T10:11:02Z").ended == 1
    row = the_row(engine)
    assert (row.status, row.api_run_id) == ("succeeded", accepted)
    assert receipts(engine) == 1 and execution_api.store.executions == 1


def test_a_fired_slot_whose_api_run_id_never_came_back_is_resumed_past_the_last_attempt(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    """Found by the fault simulator (seeds 13 and 25, 1 h): slots settled lost, unbilled.

    A run killed while it polled had not kept the API's run id, so after the last attempt
    the slot was settled ``dispatch_lost`` (or ``cancelled``) unbilled, while the API ran
    it and charged for it. Past its bound it is now resumed under its key by the sensor's
    polls, which learn its run and poll it to its end.
    """
    long_slot(engine)
    resources = fast_polls(make_resources(database_url, execution_api, "2026-11-22T10:00:30Z"))
    apply_partitions(instance, tick(instance, resources, None))
    assert _past_the_last_attempt(engine) == ("retry", "lost")
    assert _sensor_polls(engine, execution_api, "2026-11-22T10:11:02Z").still_going == 1
    row = the_row(engine)
    assert row.status == "running" and row.api_run_id is not None
    # Learnt just now: the API may have started it only now; its timeout counts from here.
    assert row.called_at == at("2026-11-22T10:11:02Z")
    execution_api.store.clock.now += 30
    assert _sensor_polls(engine, execution_api, "2026-11-22T10:11:20Z").ended == 1
    assert (the_row(engine).status, receipts(engine)) == ("succeeded", 1)
    assert execution_api.store.executions == 1


def test_a_dispatch_run_cancelled_by_a_person_cancels_its_slots_not_retries_them(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    """Review defect A10: a person's cancel was retried as a fault.

    The batch went to its next attempt, and after three cancels its slots were settled
    ``failed``/``dispatch_lost`` and counted towards the pause streak.
    """
    with engine.begin() as conn:
        view = make_schedule(conn, LATE, make_grant(conn, LATE), jitter_seconds=0)
    resources = make_resources(database_url, execution_api, "2026-11-22T10:00:30Z")
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    (request,) = first.run_requests or []
    run = daemon_run(instance, request, dg.DagsterRunStatus.STARTED)
    instance.report_run_canceled(run)
    later = tick(instance, make_resources(database_url, None, "2026-11-22T10:00:40Z"), None)
    assert not later.run_requests
    row = the_row(engine)
    assert (row.status, row.error_code) == ("cancelled", "dispatch_run_cancelled")
    assert the_batch(engine).status == "done"
    with engine.connect() as conn:
        schedule = conn.execute(sa.text("SELECT runs_failed, consecutive_failures FROM schedules"))
        assert tuple(schedule.one()) == (0, 0)
    assert execution_api.store.executions == 0 and view


def test_a_cancelled_dispatch_run_s_accepted_api_run_is_polled_and_billed(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    """Review defect A4, a cancelled dispatch run: the paid API run was abandoned.

    The row became ``cancelled`` with no API run and no receipt, while the API run went on.
    """
    long_slot(engine)
    resources = fast_polls(make_resources(database_url, execution_api, "2026-11-22T10:00:30Z"))
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    (request,) = first.run_requests or []
    run = launch(instance, resources, request)  # fired; its poll gave up, the API run goes on
    instance.report_run_canceled(instance.get_run_by_id(run.run_id))  # type: ignore[arg-type]
    (again,) = tick(instance, resources, None).run_requests or []
    assert the_row(engine).status == "cancelling"
    execution_api.store.clock.now += 60
    assert launch(instance, resources, again).success
    row = the_row(engine)
    assert (row.status, row.error_code) == ("cancelled", "dispatch_run_cancelled")
    assert row.api_run_id is not None
    assert receipts(engine) == 1 and execution_api.store.executions == 1


def test_a_pause_with_terminate_while_the_call_is_in_flight_records_what_it_cost(
    engine: sa.Engine, execution_api: RunningApi, database_url: str, instance: dg.DagsterInstance
) -> None:
    """Review defect A4, pause --terminate (or overlap cancel_other) mid-call.

    The heartbeat cancelled the call and settled the row ``cancelled`` with no API run id
    and no receipt.
    """
    view = long_slot(engine, timeout_seconds=600)
    resources = make_resources(database_url, execution_api, "2026-11-22T10:00:30Z")
    (request,) = tick(instance, resources, None).run_requests or []
    current = [at("2026-11-22T10:01:00Z")]
    polls = [0]

    async def sleep(seconds: float) -> None:
        current[0] += dt.timedelta(seconds=seconds)
        await asyncio.sleep(0.01)

    async def poll_sleep(seconds: float) -> None:
        polls[0] += 1
        if polls[0] == 1:  # the call is at the API: the schedule is paused, terminating
            with engine.begin() as conn:
                pause_schedule(conn, view["id"], now=current[0], note="stop", terminate=True)
        if polls[0] == 10:  # then the API run ends
            execution_api.store.clock.now += 60
        await sleep(1)

    dispatcher = Dispatcher(
        engine,
        ConcurrentCaller(
            execution_api.url, execution_api.token, poll_interval_seconds=1, sleep=poll_sleep
        ),
        dagster_run_id="run-1",
        clock=lambda: current[0],
        sleep=sleep,
        limits=DispatchLimits(lease=dt.timedelta(seconds=60), heartbeat_seconds=2),
    )
    report = asyncio.run(dispatcher.run_batch(request.tags[batches.BATCH_ID_TAG], 1))
    assert report.fired == 1 and not report.lease_lost
    row = the_row(engine)
    assert (row.status, row.error_code) == ("cancelled", "schedule_paused")
    assert row.api_run_id is not None
    assert receipts(engine) == 1 and execution_api.store.executions == 1
