"""graph_runs.dispatch.firing: every fire is fenced on the batch's attempt and lease.

Issue 21, A5 and A13. Slots are claimed by the real claim into a real database on each
backend; the fence is asked through ``decide_and_fire`` as a dispatch run asks it, and a
whole ``Dispatcher`` is run in-process against the real local execution API over HTTP,
with a clock that moves only when the run sleeps.
"""

import asyncio
import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch import batches
from graph_runs.dispatch.dispatcher import Dispatcher, DispatchLimits
from graph_runs.dispatch.firing import decide_and_fire
from graph_runs.execution_api.concurrent_calls import ConcurrentCaller
from graph_runs.scheduling.claim import TickLimits, claim_due_slots
from graph_runs.store.tables import run_ledger
from tests.conftest import RunningApi
from tests.helpers import at, make_grant, make_schedule

CREATED = at("2026-11-22T10:00:05Z")  # an every-minute schedule's first slot is 10:01
CLAIMED = at("2026-11-22T10:00:30Z")
INSTANT = at("2026-11-22T10:01:00Z")
LEASE = dt.timedelta(seconds=60)


def claimed_batch(engine: sa.Engine) -> str:
    """One slot due at 10:01, claimed 30 s ahead into a batch of its own; its batch id."""
    with engine.begin() as conn:
        make_schedule(conn, CREATED, make_grant(conn, CREATED), jitter_seconds=0)
        claim_due_slots(
            conn,
            now=CLAIMED,
            schedule_limits=ScheduleLimits(),
            tick_limits=TickLimits(lookahead=dt.timedelta(seconds=50)),
        )
        (batch,) = batches.form_batches(conn, now=CLAIMED, horizon=INSTANT, batch_size=10)
    return batch.id


def the_row(engine: sa.Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(run_ledger)).one()


def decide(engine: sa.Engine, batch_id: str, run_id: str, attempt: int) -> Any:
    ledger_id = the_row(engine).id
    with engine.begin() as conn:
        return decide_and_fire(
            conn,
            [ledger_id],
            batch_id=batch_id,
            dagster_run_id=run_id,
            attempt=attempt,
            now=INSTANT,
        )


def take(engine: sa.Engine, batch_id: str, attempt: int, run_id: str, at_: dt.datetime) -> None:
    with engine.begin() as conn:
        assert batches.take_lease(
            conn, batch_id, attempt, dagster_run_id=run_id, now=at_, lease=LEASE
        )


def test_a_run_that_holds_the_lease_fires(engine: sa.Engine) -> None:
    batch_id = claimed_batch(engine)
    take(engine, batch_id, 1, "run-1", CLAIMED)
    decided = decide(engine, batch_id, "run-1", 1)
    assert not decided.fenced and len(decided.firing) == 1
    assert (the_row(engine).status, the_row(engine).dagster_run_id) == ("running", "run-1")


def test_a_run_woken_after_its_batch_moved_to_the_next_attempt_fires_nothing(
    engine: sa.Engine,
) -> None:
    """Review defect A5: a zombie fired slots that the next attempt owned.

    It also overwrote the row's Dagster run and reset its dispatch attempts.
    """
    batch_id = claimed_batch(engine)
    take(engine, batch_id, 1, "run-1", CLAIMED)
    with engine.begin() as conn:  # the lease ran out; the sensor moves the batch on
        batch = batches.Batch.from_row(batches.get_batch(conn, batch_id))
        assert batches.redispatch(conn, batch, now=INSTANT, why="lease").action == "retry"
    take(engine, batch_id, 2, "run-2", INSTANT)
    decided = decide(engine, batch_id, "run-1", 1)
    assert decided.fenced and decided.firing == []
    row = the_row(engine)
    assert (row.status, row.dagster_run_id, row.dispatch_attempts) == ("pending", None, 0)
    # The attempt that owns the batch fires it.
    assert len(decide(engine, batch_id, "run-2", 2).firing) == 1


def test_a_run_whose_lease_ran_out_fires_nothing_before_the_sensor_moves_it_on(
    engine: sa.Engine,
) -> None:
    batch_id = claimed_batch(engine)
    # Taken at 09:59:59 for 60 s: it ran out a second before the instant.
    take(engine, batch_id, 1, "run-1", INSTANT - LEASE - dt.timedelta(seconds=1))
    assert decide(engine, batch_id, "run-1", 1).fenced
    assert the_row(engine).status == "pending"


def test_of_two_runs_of_one_attempt_only_the_one_that_took_the_lease_last_fires(
    engine: sa.Engine,
) -> None:
    """A second run of the same attempt (a run retried by Dagster) takes the lease over."""
    batch_id = claimed_batch(engine)
    take(engine, batch_id, 1, "run-1", CLAIMED)
    take(engine, batch_id, 1, "run-1-retry", CLAIMED + dt.timedelta(seconds=5))
    assert decide(engine, batch_id, "run-1", 1).fenced
    assert len(decide(engine, batch_id, "run-1-retry", 1).firing) == 1


def test_a_dispatch_run_frozen_past_its_lease_wakes_and_calls_nothing(
    engine: sa.Engine, execution_api: RunningApi
) -> None:
    """The whole run, frozen while it waits for the instant: its heartbeat never noticed.

    Frozen for two minutes (a SIGSTOP, a paused VM): meanwhile the sensor moved the batch
    to attempt 2. Woken, it reaches the instant and must not POST the slot.
    """
    batch_id = claimed_batch(engine)
    current = [CLAIMED]

    async def frozen_then_woken(seconds: float) -> None:
        if current[0] < INSTANT:
            current[0] = INSTANT + dt.timedelta(minutes=2)
            with engine.begin() as conn:
                batch = batches.Batch.from_row(batches.get_batch(conn, batch_id))
                batches.redispatch(conn, batch, now=current[0], why="lease")
        else:
            current[0] += dt.timedelta(seconds=seconds)
        await asyncio.sleep(0)

    dispatcher = Dispatcher(
        engine,
        ConcurrentCaller(execution_api.url, execution_api.token),
        dagster_run_id="run-1",
        clock=lambda: current[0],
        sleep=frozen_then_woken,
        # A heartbeat slower than the freeze: only the fence can stop the fire.
        limits=DispatchLimits(lease=LEASE, heartbeat_seconds=3600),
    )
    report = asyncio.run(dispatcher.run_batch(batch_id, 1))
    assert (report.fired, report.lease_lost) == (0, True)
    assert execution_api.store.executions == 0
    assert the_row(engine).status == "pending"


def test_a_heartbeat_that_cannot_renew_for_any_reason_stops_the_firing_not_itself(
    engine: sa.Engine, execution_api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review defect A13: the heartbeat died silently on anything but a database error.

    The run then fired on with no lease. Here every renewal raises a RuntimeError (as
    iterating a table that changes would); once the lease may have run out, firing stops.
    """
    batch_id = claimed_batch(engine)
    current = [CLAIMED]

    async def sleep(seconds: float) -> None:
        current[0] += dt.timedelta(seconds=seconds)
        await asyncio.sleep(0)

    def broken(*_args: Any) -> Any:
        raise RuntimeError("dictionary changed size during iteration")

    dispatcher = Dispatcher(
        engine,
        ConcurrentCaller(execution_api.url, execution_api.token),
        dagster_run_id="run-1",
        clock=lambda: current[0],
        sleep=sleep,
        limits=DispatchLimits(lease=dt.timedelta(seconds=20), heartbeat_seconds=5),
    )
    monkeypatch.setattr(dispatcher, "_renew", broken)
    report = asyncio.run(dispatcher.run_batch(batch_id, 1))
    assert (report.fired, report.lease_lost) == (0, True)
    assert execution_api.store.executions == 0
