"""graph_runs.dispatch.dispatcher, batches, firing: a dispatch run fires its batch at each instant.

A burst is spread over several runs of equal size.

Batches are claimed by the real sensor tick and run in-process against the real local
execution API over HTTP and a real schedules database. The clock is fixed
(``tests.dagster_helpers.FixedClock``): the dispatch run's clock starts there and moves only when it
sleeps, so "fired at the instant, not before" is checked to the microsecond.
"""

import asyncio
import datetime as dt
import time
from decimal import Decimal
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch.batches import take_lease
from graph_runs.dispatch.dispatcher import Dispatcher, DispatchLimits
from graph_runs.dispatch.firing import decide_and_fire
from graph_runs.dispatch.ledger import record_outcome
from graph_runs.execution_api.client import Outcome
from graph_runs.execution_api.concurrent_calls import ConcurrentCaller
from graph_runs.money.budgets import set_budget
from graph_runs.resources.dispatch import DispatchResource
from graph_runs.scheduling.schedules import pause_schedule
from graph_runs.scheduling.triggers import backfill_schedule
from graph_runs.store.tables import charge_receipts, dispatch_batches, run_ledger, schedules
from tests.conftest import RunningApi
from tests.dagster_helpers import (
    apply_partitions,
    daemon_run,
    events_tick,
    launch,
    make_resources,
    tick,
)
from tests.helpers import at, make_grant, make_schedule

CREATED = at("2026-11-22T09:59:30Z")
# Created after 10:00: a every-minute schedule's first slot is 10:01.
LATE = at("2026-11-22T10:00:05Z")


def rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(run_ledger).order_by(run_ledger.c.scheduled_for)))


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def claim(
    instance: dg.DagsterInstance, database_url: str, api: RunningApi, now: str
) -> tuple[dict[str, Any], list[dg.RunRequest]]:
    resources = make_resources(database_url, api, now)
    # One run for every owner's slots: account batches are tested on their own below.
    resources["dispatch"] = DispatchResource(account_batches=0)
    result = tick(instance, resources, None)
    apply_partitions(instance, result)
    return resources, list(result.run_requests or [])


def test_a_dispatch_run_of_200_slots_executes_and_bills_each_once(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    with engine.begin() as conn:
        grants = [make_grant(conn, CREATED, owner=owner) for owner in ("alice", "bob")]
        for n in range(200):
            make_schedule(conn, CREATED, grants[n % 2], input={"n": n})
    resources, requests = claim(instance, database_url, execution_api, "2026-11-22T10:00:01Z")
    (request,) = requests
    assert request.tags["graph_runs/batch_size"] == "200" and request.partition_key is None
    run = launch(instance, resources, request)
    assert run.success
    assert execution_api.store.executions == 200
    assert count(engine, charge_receipts) == 200
    fired = rows(engine)
    assert {r.status for r in fired} == {"succeeded"}
    assert {r.dagster_run_id for r in fired} == {run.run_id}
    with engine.connect() as conn:
        receipts = conn.execute(sa.select(charge_receipts.c.graph_run_id)).scalars().all()
        batch = conn.execute(sa.select(dispatch_batches)).one()
    assert sorted(receipts) == sorted(r.id for r in fired)
    assert (batch.status, batch.size, batch.dagster_run_id) == ("done", 200, run.run_id)
    # One event per slot, each on its schedule's partition of scheduled_graph_runs,
    # announced by the slot events sensor; the run itself logged none.
    assert not run.asset_materializations_for_node("dispatch_slots")
    announced = events_tick(instance, resources, None)
    assert isinstance(announced, dg.SensorResult)
    events = announced.asset_events
    assert sorted(e.partition or "" for e in events) == sorted(r.schedule_id for r in fired)
    # The run again (a daemon retrying the request) fires nothing and bills nothing.
    assert launch(instance, resources, request).success
    assert execution_api.store.executions == 200 and count(engine, charge_receipts) == 200


@pytest.mark.parametrize(
    ("counts", "sizes"),
    [([100, 80, 70], [100, 80, 70]), ([60] * 5, [300]), ([13] * 9, [117]), ([2, 1], [3])],
)
def test_a_few_accounts_get_a_run_each_that_the_owner_tag_finds_and_many_share_runs(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, counts: list[int],
    sizes: list[int],
) -> None:  # fmt: skip
    # Three accounts' 250 slots at one instant: a run per account, each tagged with its
    # owner. Five would be more runs than four side by side, nine more accounts than
    # GRAPH_RUNS_ACCOUNT_BATCHES, and two accounts' three slots not worth two launches:
    # one mixed run each time.
    with engine.begin() as conn:
        for i, slots in enumerate(counts):
            grant = make_grant(conn, CREATED, owner=f"owner-{i}")
            for n in range(slots):
                make_schedule(conn, CREATED, grant, input={"n": n})
    resources = make_resources(database_url, None, "2026-11-22T10:00:01Z")
    resources["dispatch"] = DispatchResource(parallel_runs=4, account_batches=8)
    # (account_batches above 4 here: the four runs side by side are what stops five.)
    requests = tick(instance, resources, None).run_requests or []
    assert sorted((int(r.tags["graph_runs/batch_size"]) for r in requests), reverse=True) == sizes
    owners = {r.tags.get("graph_runs/owner") for r in requests}
    assert owners == ({f"owner-{i}" for i in range(3)} if len(sizes) == 3 else {None})


@pytest.mark.parametrize(("batch_size", "sizes"), [(2500, [300, 300]), (250, [200] * 3)])
def test_a_burst_is_spread_over_runs_of_equal_size_within_the_batch_size(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    batch_size: int,
    sizes: list[int],
) -> None:
    # 600 slots at one instant: two runs of 300 under the default four parallel runs (250
    # slots at least each), or three of 200 under a batch size of 250, never 250 + 250 + 100.
    with engine.begin() as conn:
        grants = [make_grant(conn, CREATED, owner=f"owner-{i}") for i in range(6)]
        for n in range(600):
            make_schedule(conn, CREATED, grants[n % 6], input={"n": n})
    resources = make_resources(database_url, None, "2026-11-22T10:00:01Z")
    resources["dispatch"] = DispatchResource(
        batch_size=batch_size, parallel_runs=4, account_batches=0
    )
    requests = tick(instance, resources, None).run_requests or []
    assert [int(r.tags["graph_runs/batch_size"]) for r in requests] == sizes
    with engine.connect() as conn:
        per_batch = conn.execute(
            sa.select(sa.func.count()).select_from(run_ledger).group_by(run_ledger.c.batch_id)
        ).scalars()
        assert sorted(per_batch) == sizes


def test_a_slot_is_claimed_ahead_and_fired_at_its_instant_not_before(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, LATE)
        make_schedule(conn, LATE, grant, jitter_seconds=0)
    # 10:00:09 is 51 s ahead of 10:01: beyond the lookahead (30 s interval + 20 s).
    _, early = claim(instance, database_url, execution_api, "2026-11-22T10:00:09Z")
    assert early == [] and rows(engine) == []
    # 10:00:10 is 50 s ahead: claimed now, its run requested now.
    resources, (request,) = claim(instance, database_url, execution_api, "2026-11-22T10:00:10Z")
    (row,) = rows(engine)
    assert (row.status, row.due_at) == ("pending", at("2026-11-22T10:01:00Z"))
    assert launch(instance, resources, request).success
    (row,) = rows(engine)
    assert row.status == "succeeded"
    # The run started at 10:00:10 on its clock and slept until the instant, exactly.
    assert row.started_at == at("2026-11-22T10:01:00Z")


def test_overlap_is_decided_at_the_instant_not_when_claimed(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    """Claimed 40 s ahead while the previous run still went; that run ends before the instant."""
    with engine.begin() as conn:
        grant = make_grant(conn, LATE)
        going = make_schedule(conn, LATE, grant)  # overlap skip
        still = make_schedule(conn, LATE, grant)
    resources, (first,) = claim(instance, database_url, execution_api, "2026-11-22T10:00:30Z")
    # Both 10:01 slots fired in a run of their own (a re-execution, say), still going at
    # 10:01:20...
    elsewhere = daemon_run(instance, first, dg.DagsterRunStatus.STARTED).run_id
    with engine.begin() as conn:
        conn.execute(run_ledger.update().values(status="running", dagster_run_id=elsewhere))
        conn.execute(dispatch_batches.update().values(status="done"))
    resources, (second,) = claim(instance, database_url, execution_api, "2026-11-22T10:01:20Z")
    assert [r.status for r in rows(engine)].count("pending") == 2  # nothing decided yet
    (ended,) = [r for r in rows(engine) if r.schedule_id == going["id"] and r.dagster_run_id]
    with engine.begin() as conn:
        # ...and one of them ends before 10:02.
        record_outcome(
            conn,
            ended.id,
            Outcome(status="succeeded", api_run_id="api-x"),
            dagster_run_id=elsewhere,
            now=at("2026-11-22T10:01:40Z"),
        )
    run = launch(instance, resources, second)
    assert run.success
    by_schedule = {(r.schedule_id, r.scheduled_for): r for r in rows(engine)}
    fired = by_schedule[(going["id"], at("2026-11-22T10:02:00Z"))]
    skipped = by_schedule[(still["id"], at("2026-11-22T10:02:00Z"))]
    assert (fired.status, fired.started_at) == ("succeeded", at("2026-11-22T10:02:00Z"))
    assert (skipped.status, skipped.error_code) == ("skipped_overlap", "skipped_overlap")
    with engine.connect() as conn:
        totals = dict(conn.execute(sa.select(schedules.c.id, schedules.c.runs_total)).all())
    # The skipped slot is not a run of its schedule.
    assert (totals[going["id"]], totals[still["id"]]) == (2, 1)
    assert execution_api.store.executions == 1


def test_a_budget_reached_after_the_claim_skips_the_slot_at_its_instant(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, LATE)
        make_schedule(conn, LATE, grant)
    resources, (request,) = claim(instance, database_url, execution_api, "2026-11-22T10:00:30Z")
    with engine.begin() as conn:
        set_budget(
            conn,
            billing_account="alice-billing",
            period="month",
            limit_usd=Decimal("0"),
            now=at("2026-11-22T10:00:40Z"),
            by="finance",
        )
    assert launch(instance, resources, request).success
    (row,) = rows(engine)
    assert (row.status, row.error_code) == ("skipped_budget", "skipped_budget")
    assert "alice-billing" in row.error_message
    assert execution_api.store.executions == 0


def test_a_poll_timeout_keeps_the_api_run_and_the_next_attempt_resumes_it(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    """Review defect: a poll that timed out dropped the API run id.

    No receipt was ever written, though the API run went on (and cost money).
    """
    with engine.begin() as conn:
        grant = make_grant(conn, LATE, scopes=["graph:execute:sleep"])
        make_schedule(conn, LATE, grant, graph_id="sleep", input={"seconds": 30}, timeout_seconds=1)
    resources, (request,) = claim(instance, database_url, execution_api, "2026-11-22T10:00:30Z")
    resources["execution_api"] = resources["execution_api"].model_copy(
        update={"poll_interval_seconds": 0.05}
    )
    first = launch(instance, resources, request)
    assert not first.success
    (row,) = rows(engine)
    assert (row.status, row.api_run_id is not None) == ("running", True)
    assert count(engine, charge_receipts) == 0
    # The Dagster run ended with the slot unrecorded: the next tick dispatches attempt 2.
    execution_api.store.clock.now += 60  # meanwhile the API run finished
    instance.report_run_failed(instance.get_run_by_id(first.run_id))  # type: ignore[arg-type]
    (again,) = tick(instance, resources, None).run_requests or []
    assert again.run_key is not None and again.run_key.endswith(":2")
    assert launch(instance, resources, again).success
    (row,) = rows(engine)
    assert (row.status, row.dispatch_attempts) == ("succeeded", 2)
    assert execution_api.store.executions == 1 and count(engine, charge_receipts) == 1


def test_a_slot_paused_then_backfilled_fires_once_in_its_new_batch(
    engine: sa.Engine, database_url: str, instance: dg.DagsterInstance, execution_api: RunningApi
) -> None:
    """Review defect: pause, then backfill, while the slot's first batch was being worked.

    The first batch's run had loaded the slot before the pause; deciding at the instant, it
    re-read the row by id, found it ``pending`` again (revived by the backfill) and fired it,
    though it now belonged to the backfill's batch, which fired it too.
    """
    with engine.begin() as conn:
        grant = make_grant(conn, LATE)
        view = make_schedule(conn, LATE, grant, jitter_seconds=0)
    resources, (first,) = claim(instance, database_url, execution_api, "2026-11-22T10:00:30Z")
    (row,) = rows(engine)
    with engine.begin() as conn:
        pause_schedule(conn, view["id"], now=at("2026-11-22T10:00:40Z"), note="hold")
        report = backfill_schedule(
            conn,
            view["id"],
            start=at("2026-11-22T10:01:00Z"),
            end=at("2026-11-22T10:01:00Z"),
            now=at("2026-11-22T10:01:30Z"),
            limits=ScheduleLimits(),
        )
    assert report["ran"] == 1
    resources, requests = claim(instance, database_url, execution_api, "2026-11-22T10:01:31Z")
    # The first batch has no run yet, so it is asked for again, beside the backfill's.
    (second,) = [r for r in requests if r.run_key != first.run_key]
    # The first batch's run, which loaded the slot before the pause, decides its instant now.
    with engine.begin() as conn:
        assert take_lease(
            conn,
            first.tags["graph_runs/batch_id"],
            1,
            dagster_run_id="first-run",
            now=at("2026-11-22T10:00:31Z"),
            lease=dt.timedelta(seconds=60),
        )
        decided = decide_and_fire(
            conn,
            [row.id],
            batch_id=first.tags["graph_runs/batch_id"],
            dagster_run_id="first-run",
            attempt=1,
            now=at("2026-11-22T10:01:00Z"),
        )
    assert decided.firing == []
    assert launch(instance, resources, second).success
    assert launch(instance, resources, first).success
    (row,) = rows(engine)
    assert (row.status, row.trigger_kind) == ("succeeded", "backfill")
    assert execution_api.store.executions == 1
    assert count(engine, charge_receipts) == 1


class _RenewalsFail:
    """The database refuses the first ``failures`` lease renewals, as a dropped connection.

    Later renewals go through and are counted. Taking the lease and closing the batch are
    other statements, left alone.
    """

    def __init__(self, engine: sa.Engine, failures: int) -> None:
        self.failures, self.renewed = failures, 0
        sa.event.listen(engine, "before_cursor_execute", self)

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith("UPDATE dispatch_batches SET lease_until"):
            return
        if self.failures:
            self.failures -= 1
            raise sa.exc.OperationalError(statement, None, ConnectionError("connection lost"))
        self.renewed += 1


class _FastTime:
    """Time ten times faster than the wall clock, for the run, its caller and the API.

    A run's heartbeat and its calls sleep side by side; a clock that each sleep moves on by
    hand would run ahead of the heartbeat it tests. Margins are seconds of real time.
    """

    SPEED = 10

    def __init__(self, start: dt.datetime) -> None:
        self.start, self.origin = start, time.monotonic()

    def elapsed(self) -> float:
        return (time.monotonic() - self.origin) * self.SPEED

    def now(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=self.elapsed())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.SPEED)


@pytest.mark.parametrize(("failures", "lost"), [(2, False), (100, True)])
def test_a_lease_renewal_the_database_refuses_is_retried_while_the_lease_holds(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    execution_api: RunningApi,
    failures: int,
    lost: bool,
) -> None:
    """Review defect: one failed renewal ended the heartbeat for good, silently.

    The run then fired on with a lease nobody renewed: past its expiry the sensor gave the
    batch to another run, and both called the API for its slots. Now a refused renewal is
    tried again at the next beat; once the lease may have run out, the run fires no more.
    """
    with engine.begin() as conn:
        grant = make_grant(conn, LATE, scopes=["graph:execute:sleep"])
        make_schedule(conn, LATE, grant, graph_id="sleep", input={"seconds": 45}, jitter_seconds=0)
    claim(instance, database_url, execution_api, "2026-11-22T10:00:30Z")
    (row,) = rows(engine)
    fast = _FastTime(at("2026-11-22T10:01:00Z"))  # the run starts at the slot's instant
    execution_api.store.clock = fast.elapsed
    renewals = _RenewalsFail(engine, failures)
    dispatcher = Dispatcher(
        engine,
        ConcurrentCaller(
            execution_api.url,
            execution_api.token,
            poll_interval_seconds=5,
            sleep=fast.sleep,
            clock=fast.elapsed,
        ),
        dagster_run_id="run-1",
        clock=fast.now,
        sleep=fast.sleep,
        # Renewed every 5 s; a lease of 40 s outlasts two refusals by 25 s (2.5 s of real time).
        limits=DispatchLimits(lease=dt.timedelta(seconds=40), heartbeat_seconds=5),
    )
    report = asyncio.run(dispatcher.run_batch(row.batch_id, 1))
    assert report.lease_lost is lost
    if not lost:
        # Renewed again after the two refusals, and the slot ran to its end, recorded.
        assert renewals.renewed >= 1
        assert [r.status for r in rows(engine)] == ["succeeded"]
