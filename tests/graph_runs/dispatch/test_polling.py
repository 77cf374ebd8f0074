"""graph_runs.dispatch.polling: API runs that outlive their dispatch run, polled by the sensor.

Issue 21 A12: a dispatch run lived until its slowest call ended (an hour by default), so two
slow batches a minute filled the run queue for every tenant. Now a run that has fired
everything polls for ``hand_off_seconds`` and hands the API runs still going to the sensor,
which polls each once per tick when due, records what ended, and gives up only past the
slot's timeout and a margin.

Slots are claimed by the real sensor tick into a real database on each backend; dispatch
runs execute in-process against the real local execution API over HTTP, whose ``sleep``
graph runs until the test moves the API's clock.
"""

import uuid
from typing import Any

import dagster as dg
import httpx
import sqlalchemy as sa
from dagster._core.test_utils import create_run_for_test

from graph_runs.dispatch import ledger
from graph_runs.execution_api.client import request_content, request_headers, runs_url
from graph_runs.resources import DispatchResource
from graph_runs.scheduling.schedules import pause_schedule
from graph_runs.store.tables import charge_receipts, dispatch_batches, run_ledger
from tests.conftest import RunningApi
from tests.dagster_helpers import FixedClock, apply_partitions, launch, make_resources, tick
from tests.graph_runs.dispatch.test_batches import long_slot
from tests.helpers import at, make_grant


def _slow_slot(engine: sa.Engine, *, timeout_seconds: int = 3600) -> dict[str, Any]:
    """A slot at 10:01 whose API run takes 30 minutes (of the API's clock)."""
    return long_slot(engine, timeout_seconds=timeout_seconds, seconds=1800)


def _resources(database_url: str, api: RunningApi, now: str) -> dict[str, Any]:
    """Hand-off at once after the last fire; the API polled every 50 ms meanwhile."""
    resources = make_resources(database_url, api, now)
    resources["dispatch"] = DispatchResource(hand_off_seconds=0)
    resources["execution_api"] = resources["execution_api"].model_copy(
        update={"poll_interval_seconds": 0.05}
    )
    return resources


def _at(resources: dict[str, Any], now: str) -> dict[str, Any]:
    return {**resources, "clock": FixedClock(fixed_now=now)}


def _row(engine: sa.Engine) -> Any:
    """The 10:01 slot (later ones of the every-minute schedule are skipped_overlap)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(run_ledger).where(run_ledger.c.scheduled_for == at("2026-11-22T10:01:00Z"))
        ).one()


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def _handed_off(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, api: RunningApi
) -> tuple[dict[str, Any], dg.ExecuteInProcessResult]:
    resources = _resources(database_url, api, "2026-11-22T10:00:30Z")
    first = tick(instance, resources, None)
    apply_partitions(instance, first)
    (request,) = first.run_requests or []
    return resources, launch(instance, resources, request)


def test_a_dispatch_run_hands_a_long_api_run_to_the_sensor_and_ends(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    _slow_slot(engine)
    resources, run = _handed_off(engine, database_url, instance, execution_api)
    # The run ended, well before its slot's API run: its place in the queue is free.
    assert run.success
    row = _row(engine)
    assert (row.status, row.api_run_id is not None, row.poll_after is not None) == (
        "running",
        True,
        True,
    )
    with engine.connect() as conn:
        assert conn.execute(sa.select(dispatch_batches.c.status)).scalar_one() == "done"
    # Polled by the sensor, still going: neither settled by reconcile (its dispatch run
    # ended by design) nor dispatched again.
    later = tick(instance, _at(resources, "2026-11-22T10:02:00Z"), None)
    assert not later.run_requests
    assert _row(engine).status == "running" and _row(engine).poll_after > at("2026-11-22T10:02:00Z")
    execution_api.store.clock.now += 1800
    tick(instance, _at(resources, "2026-11-22T10:32:00Z"), None)
    row = _row(engine)
    assert (row.status, row.error_code, row.poll_after) == ("succeeded", None, None)
    assert _count(engine, charge_receipts) == 1 and execution_api.store.executions == 1


def test_a_handed_off_api_run_is_given_up_on_only_past_its_timeout_and_the_margin(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    _slow_slot(engine, timeout_seconds=600)
    resources, _run = _handed_off(engine, database_url, instance, execution_api)
    # Fired at 10:01 with a 10-minute timeout: polled on until 10:21, given up after.
    tick(instance, _at(resources, "2026-11-22T10:20:59Z"), None)
    assert _row(engine).status == "running"
    tick(instance, _at(resources, "2026-11-22T10:21:30Z"), None)
    row = _row(engine)
    assert (row.status, row.error_code) == ("failed", "dispatch_lost")
    assert row.api_run_id is not None and row.poll_after is None


def test_a_handed_off_slot_cancelled_is_polled_to_its_end_and_billed(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    view = _slow_slot(engine)
    resources, _run = _handed_off(engine, database_url, instance, execution_api)
    with engine.begin() as conn:
        pause_schedule(conn, view["id"], now=at("2026-11-22T10:05:00Z"), note=None, terminate=True)
    assert _row(engine).status == "cancelling"
    execution_api.store.clock.now += 1800
    tick(instance, _at(resources, "2026-11-22T10:32:00Z"), None)
    row = _row(engine)
    assert (row.status, row.error_code) == ("cancelled", "schedule_paused")
    assert _count(engine, charge_receipts) == 1


def test_polls_of_an_api_that_is_down_change_nothing_but_their_next_poll(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    _slow_slot(engine)
    resources, _run = _handed_off(engine, database_url, instance, execution_api)
    down = _at(resources, "2026-11-22T10:02:00Z")
    down["execution_api"] = down["execution_api"].model_copy(
        update={"base_url": "http://127.0.0.1:9"}
    )
    result = tick(instance, down, None)
    assert result.cursor is not None
    row = _row(engine)
    assert row.status == "running" and row.poll_after > at("2026-11-22T10:02:00Z")


def test_a_run_of_one_slot_that_dies_in_its_call_is_resumed_under_its_key_and_billed(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    # Found by the fault simulator (seed 1, with approvals): a run of one slot (approved,
    # ad-hoc, a UI partition run) killed after its POST reached the API, before the answer
    # came back. Reconcile settled the row failed with no API run id; nothing ever polled
    # the API run, which ran and was paid for without a receipt.
    died = str(uuid.uuid4())
    now = at("2026-11-22T10:01:00Z")
    with engine.begin() as conn:
        grant = make_grant(conn, now, scopes=["graph:execute:sleep"])
        request = ledger.AdhocRequest(
            idempotency_key="adhoc-1", graph_id="sleep", grant_id=grant.id,
            input={"seconds": 1800}, timeout_seconds=3600,
        )  # fmt: skip
        row = ledger.start_adhoc_run(
            conn, request, owner=grant.owner, billing_account=grant.billing_account,
            dagster_run_id=died, now=now,
        )  # fmt: skip
    # The op's one call reached the API; its process died before it read the answer.
    body = ledger.request_body(row, grant.connection_ids)
    answer = httpx.post(
        runs_url(execution_api.url, "sleep"),
        headers=request_headers(execution_api.token, row.idempotency_key, died),
        content=request_content(body),
    )
    assert answer.status_code == 202
    create_run_for_test(
        instance, job_name="graph_run_adhoc_job", run_id=died,
        status=dg.DagsterRunStatus.FAILURE,
    )  # fmt: skip
    resources = _resources(database_url, execution_api, "2026-11-22T10:02:00Z")
    tick(instance, resources, None)
    with engine.connect() as conn:
        polled = ledger.get_run(conn, row.id)
    # Not settled: handed to the sensor's polls, which learnt the API run under the key.
    assert (polled.status, polled.api_run_id) == ("running", answer.json()["run_id"])
    execution_api.store.clock.now += 1800
    tick(instance, _at(resources, "2026-11-22T10:33:00Z"), None)
    with engine.connect() as conn:
        done = ledger.get_run(conn, row.id)
    assert (done.status, done.poll_after) == ("succeeded", None)
    assert _count(engine, charge_receipts) == 1 and execution_api.store.executions == 1
