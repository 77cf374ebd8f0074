"""Two clocks: a dispatch run's and the sensor's disagree, and neither fires early or late.

Issue 21 A11. The lease's expiry was written by the run's clock and compared with the
sensor's, so a run whose clock was behind looked dead while it worked (its batch went to a
second run), and one whose clock was ahead kept a dead run's slots waiting. The instant was
the run's alone, so a run whose clock ran ahead fired early. Now the sensor times the
lease's renewals (beats) on its own clock, and a fire waits for the database's clock.

Slots are claimed by the real claim into a real database on each backend; the sensor's
judgement is ``batches.assess`` and ``recover``, as the tick runs them; the firing test runs
a whole ``Dispatcher`` against the real local execution API over HTTP.
"""

import asyncio
import datetime as dt
import time

import httpx
import pytest
import sqlalchemy as sa

from graph_runs.dispatch import batches
from graph_runs.dispatch.dispatcher import Dispatcher, DispatchLimits
from graph_runs.execution_api.concurrent_calls import ConcurrentCaller
from graph_runs.store.tables import dispatch_batches, run_ledger
from tests.conftest import RunningApi
from tests.graph_runs.dispatch.test_firing import CLAIMED, LEASE, claimed_batch

RECOVERY = batches.Recovery(lease=LEASE)
TICK = dt.timedelta(seconds=30)
BEAT = dt.timedelta(seconds=15)


def _sensor_tick(engine: sa.Engine, batch_id: str, now: dt.datetime) -> str | None:
    """The sensor's judgement of the batch at ``now`` (its clock): why it moved it, if it did."""
    with engine.begin() as conn:
        batch = batches.Batch.from_row(batches.get_batch(conn, batch_id))
        verdict = batches.assess(batch, run_id="run-1", run_status="STARTED", now=now,
                                 limits=RECOVERY)  # fmt: skip
        if verdict is None:
            return None
        moved = batches.recover(conn, batch, verdict, now=now, limits=RECOVERY)
    return None if moved is None else moved.why


@pytest.mark.parametrize("skew_seconds", [-300, -45, 0, 45, 300])
def test_a_live_run_is_never_taken_for_dead_and_a_dead_one_is_found_within_a_lease_and_a_tick(
    engine: sa.Engine, skew_seconds: int
) -> None:
    skew = dt.timedelta(seconds=skew_seconds)  # the run's clock minus the sensor's
    batch_id = claimed_batch(engine)
    with engine.begin() as conn:
        assert batches.take_lease(
            conn, batch_id, 1, dagster_run_id="run-1", now=CLAIMED + skew, lease=LEASE
        )
    # Ten minutes of a live run renewing every 15 s, the sensor ticking every 30 s.
    sensor, beat = CLAIMED, CLAIMED
    while sensor < CLAIMED + dt.timedelta(minutes=10):
        sensor += TICK
        while beat + BEAT <= sensor:
            beat += BEAT
            with engine.begin() as conn:
                assert batches.renew_lease(conn, batch_id, 1, now=beat + skew, lease=LEASE)
        assert _sensor_tick(engine, batch_id, sensor) is None, f"taken for dead at {sensor}"
    # The run dies after its last beat: found by the sensor's clock, whatever the run's.
    died = beat
    while (why := _sensor_tick(engine, batch_id, sensor)) is None:
        assert sensor - died <= LEASE + 2 * TICK, "a dead run's slots kept waiting"
        sensor += TICK
    assert "stopped renewing its lease" in why
    assert sensor - died > LEASE  # and never before a whole lease without a renewal
    with engine.connect() as conn:
        assert conn.execute(sa.select(dispatch_batches.c.attempt)).scalar_one() == 2


class _Arrivals(httpx.AsyncHTTPTransport):
    """A real HTTP transport that notes when each submission leaves, by the wall clock."""

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.posts.append(time.time())
        return await super().handle_async_request(request)


def test_a_run_whose_clock_runs_ahead_fires_no_earlier_than_the_databases_clock(
    engine: sa.Engine, execution_api: RunningApi
) -> None:
    # The database's clock is the machine's, which no test can move: this test waits for
    # the real instant, 1.5 s ahead. The run's clock says it passed 3.5 s ago.
    batch_id = claimed_batch(engine)
    due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
    with engine.begin() as conn:
        conn.execute(run_ledger.update().values(due_at=due))
    ahead = dt.timedelta(seconds=5)
    transport = _Arrivals()
    dispatcher = Dispatcher(
        engine,
        ConcurrentCaller(execution_api.url, execution_api.token, transport=transport),
        dagster_run_id="run-1",
        clock=lambda: dt.datetime.now(dt.UTC) + ahead,
        sleep=asyncio.sleep,
        limits=DispatchLimits(lease=LEASE, heartbeat_seconds=15),
    )
    report = asyncio.run(dispatcher.run_batch(batch_id, 1))
    assert report.fired == 1 and execution_api.store.executions == 1
    (posted,) = transport.posts
    assert posted >= due.timestamp(), f"fired {due.timestamp() - posted:.3f} s early"


def test_a_database_clock_far_behind_is_not_waited_for_past_the_skew_bound(
    engine: sa.Engine, execution_api: RunningApi
) -> None:
    # A slot due an hour from now by the database: the run's clock (virtual here) waits at
    # least 30 s past the instant for it (more: the heartbeat's sleeps move this clock too),
    # then fires on its own clock, saying so, instead of waiting the hour.
    batch_id = claimed_batch(engine)
    with engine.begin() as conn:
        conn.execute(
            run_ledger.update().values(due_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        )
        due = conn.execute(sa.select(run_ledger.c.due_at)).scalar_one()
    current = [due]

    async def sleep(seconds: float) -> None:
        current[0] += dt.timedelta(seconds=seconds)
        await asyncio.sleep(0)

    dispatcher = Dispatcher(
        engine,
        ConcurrentCaller(execution_api.url, execution_api.token),
        dagster_run_id="run-1",
        clock=lambda: current[0],
        sleep=sleep,
        limits=DispatchLimits(lease=dt.timedelta(hours=2), heartbeat_seconds=15),
    )
    report = asyncio.run(dispatcher.run_batch(batch_id, 1))
    assert report.fired == 1
    with engine.connect() as conn:
        started = conn.execute(sa.select(run_ledger.c.started_at)).scalar_one()
    assert dt.timedelta(seconds=30) <= started - due < dt.timedelta(hours=1)
