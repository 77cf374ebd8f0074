"""graph_runs.dispatch.call_places: the per-account cap on API calls holds across dispatch runs.

Issue 21 A12, second half. Each dispatch run bounded its calls per billing account in
memory only, so parallel runs of one 09:00 burst gave one tenant several times its cap at
the API. Now a fired slot takes one of its account's places, counted in the database.

Slots are claimed by the real claim into a real database on each backend, and several
``Dispatcher``s run their batches at once against the real local execution API over HTTP.
Its ``sleep`` graph runs on the API's clock, which moves only when a caller waits to poll,
so what the API ran at once is read from its own runs, not timed.
"""

import asyncio
import datetime as dt
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch import api_runs, batches, call_places
from graph_runs.dispatch.dispatcher import Dispatcher, DispatchLimits
from graph_runs.execution_api.concurrent_calls import ConcurrentCaller
from graph_runs.scheduling.claim import TickLimits, claim_due_slots
from graph_runs.store import slot_status
from graph_runs.store.tables import run_ledger
from tests.conftest import RunningApi
from tests.graph_runs.dispatch.test_firing import CLAIMED, CREATED, INSTANT
from tests.helpers import make_grant, make_schedule

CAP = 3
# Seconds of the API's clock each slot's graph runs.
RUNS_FOR = 300.0
# Long enough that neither lease nor hand-off ends a run here: the clock below moves fast.
LIMITS = DispatchLimits(
    lease=dt.timedelta(days=1), heartbeat_seconds=15, hand_off=dt.timedelta(days=1)
)


def _claim(
    engine: sa.Engine,
    slots: dict[str, int],
    batch_size: int,
    *,
    runs_for: float = RUNS_FOR,
    **fields: Any,
) -> list[str]:
    """``slots[owner]`` slots of the sleep graph due at 10:01, in batches of ``batch_size``.

    Each graph runs ``runs_for`` seconds of the API's clock; ``fields`` go to each schedule.
    """
    with engine.begin() as conn:
        for owner, n in slots.items():
            grant = make_grant(conn, CREATED, owner=owner, scopes=["graph:execute:sleep"])
            for i in range(n):
                make_schedule(
                    conn,
                    CREATED,
                    grant,
                    graph_id="sleep",
                    input={"seconds": runs_for, "n": i},
                    jitter_seconds=0,
                    **fields,
                )
        claim_due_slots(
            conn,
            now=CLAIMED,
            schedule_limits=ScheduleLimits(),
            tick_limits=TickLimits(lookahead=dt.timedelta(seconds=50)),
        )
        formed = batches.form_batches(conn, now=CLAIMED, horizon=INSTANT, batch_size=batch_size)
    return [b.id for b in formed]


class _Firing(Dispatcher):
    """A dispatcher that counts the instants it has decided: the test's clock waits on them."""

    decided: list[int]

    def _decide(self, *args: Any, **kwargs: Any) -> Any:
        decided = super()._decide(*args, **kwargs)
        if not decided.early_by:
            self.decided[0] += 1
        return decided


def _dispatchers(engine: sa.Engine, api: RunningApi, count: int) -> list[Dispatcher]:
    """``count`` runs on one virtual clock; no API run ends before every run has fired.

    So the first run to fire holds its accounts' places while the others fire, whatever
    the threads' timing: which calls went at once does not depend on the machine's speed.
    """
    current = [CLAIMED]
    decided = [0]

    async def sleep(seconds: float) -> None:
        current[0] += dt.timedelta(seconds=seconds)
        await asyncio.sleep(0.001)  # lets the real HTTP and database threads answer

    async def poll_sleep(seconds: float) -> None:
        if decided[0] == count:
            api.store.clock.now += seconds  # type: ignore[attr-defined]
        await sleep(seconds)

    dispatchers = []
    for n in range(count):
        dispatcher = _Firing(
            engine,
            ConcurrentCaller(
                api.url,
                api.token,
                max_per_account=CAP,
                poll_interval_seconds=1,
                sleep=poll_sleep,
            ),
            dagster_run_id=f"run-{n}",
            clock=lambda: current[0],
            sleep=sleep,
            limits=LIMITS,
        )
        dispatcher.decided = decided
        dispatchers.append(dispatcher)
    return dispatchers


def _most_at_once(engine: sa.Engine, api: RunningApi) -> Counter[str]:
    """Per billing account, the most of its API runs going at one instant of the API's clock."""
    with engine.connect() as conn:
        query = sa.select(run_ledger.c.idempotency_key, run_ledger.c.billing_account)
        account_of = {key: account for key, account in conn.execute(query)}
    edges: list[tuple[float, int, str]] = []
    for key, (_, run_id) in api.store.keys.items():
        ends = api.store.runs[run_id].finishes_at
        edges += [(ends - RUNS_FOR, 1, account_of[key]), (ends, -1, account_of[key])]
    going: Counter[str] = Counter()
    most: Counter[str] = Counter()
    for _, step, account in sorted(edges):  # an end sorts before a start at the same instant
        going[account] += step
        most[account] = max(most[account], going[account])
    return most


def _statuses(engine: sa.Engine) -> Counter[tuple[str, str]]:
    with engine.connect() as conn:
        query = sa.select(run_ledger.c.billing_account, run_ledger.c.status)
        return Counter((a, s) for a, s in conn.execute(query))


def test_parallel_dispatch_runs_keep_one_accounts_calls_within_its_cap(
    engine: sa.Engine, execution_api: RunningApi
) -> None:
    # 12 slots of alice's account and 3 of bob's at one instant, in batches of 5: three
    # runs at once, each with alice's slots. Each run's own bound (3) let alice have 9.
    batch_ids = _claim(engine, {"alice": 12, "bob": 3}, batch_size=5)
    assert len(batch_ids) == 3
    dispatchers = _dispatchers(engine, execution_api, len(batch_ids))

    async def all_at_once() -> list[Any]:
        return await asyncio.gather(
            *(d.run_batch(b, 1) for d, b in zip(dispatchers, batch_ids, strict=True))
        )

    reports = asyncio.run(asyncio.wait_for(all_at_once(), timeout=120))
    assert sum(r.fired for r in reports) == 15
    assert not any(r.unrecorded or r.lease_lost for r in reports)
    assert _statuses(engine) == {
        ("alice-billing", "succeeded"): 12,
        ("bob-billing", "succeeded"): 3,
    }
    assert execution_api.store.executions == 15
    most = _most_at_once(engine, execution_api)
    assert most["alice-billing"] == CAP, most  # all of its places used, never more
    assert most["bob-billing"] == 3, most  # alice's queue held none of bob's slots back
    with engine.connect() as conn:
        assert call_places.held(conn, ["alice-billing", "bob-billing"]) == {}


def test_a_place_is_taken_only_while_the_account_has_one_free_and_given_back_on_leaving(
    engine: sa.Engine,
) -> None:
    # Four fired slots of one account, two runs: the first takes the cap's three, the
    # second none until one of the first's rows leaves running; a row fired since by
    # another run is not the first run's to call any more.
    _claim(engine, {"alice": 4}, batch_size=10)
    with engine.begin() as conn:
        ids = [r.id for r in conn.execute(sa.select(run_ledger.c.id).order_by(run_ledger.c.id))]
        slot_status.fire(conn, ids[:3], dagster_run_id="run-1", attempt=1, now=INSTANT)
        slot_status.fire(conn, ids[3:], dagster_run_id="run-2", attempt=1, now=INSTANT)
        first = call_places.take(conn, ids[:3], dagster_run_id="run-1", cap=CAP, now=INSTANT)
        second = call_places.take(conn, ids[3:], dagster_run_id="run-2", cap=CAP, now=INSTANT)
        assert (first.placed, second.placed) == (set(ids[:3]), set())
        row = conn.execute(sa.select(run_ledger).where(run_ledger.c.id == ids[0])).one()
        slot_status.settle_outcome(conn, row, "succeeded", finished_at=INSTANT)
        again = call_places.take(conn, ids[3:], dagster_run_id="run-2", cap=CAP, now=INSTANT)
        assert again.placed == {ids[3]}
        assert call_places.held(conn, ["alice-billing"]) == {"alice-billing": 3}
        stale = call_places.take(conn, ids[3:], dagster_run_id="run-1", cap=CAP, now=INSTANT)
        assert stale.gone == {ids[3]} and not stale.placed


def test_a_run_takes_places_only_for_the_calls_it_has_room_to_make(engine: sa.Engine) -> None:
    # Places held by calls queued behind the run's own bound were places no other run could
    # use: the four runs of a burst went one after another.
    _claim(engine, {"alice": 3, "bob": 3}, batch_size=10)
    with engine.begin() as conn:
        ids = [r.id for r in conn.execute(sa.select(run_ledger.c.id).order_by(run_ledger.c.id))]
        slot_status.fire(conn, ids, dagster_run_id="run-1", attempt=1, now=INSTANT)
        taken = call_places.take(conn, ids, dagster_run_id="run-1", cap=CAP, now=INSTANT, room=4)
        assert taken.placed == set(ids[:4])  # in the order asked, whatever the account
        assert sum(call_places.held(conn, ["alice-billing", "bob-billing"]).values()) == 4


def test_two_transactions_never_both_take_the_last_place(engine: sa.Engine) -> None:
    """On PostgreSQL two runs count at once; the account's lock orders them."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers")
    _claim(engine, {"alice": 2}, batch_size=10)
    with engine.begin() as conn:
        ids = [r.id for r in conn.execute(sa.select(run_ledger.c.id).order_by(run_ledger.c.id))]
        slot_status.fire(conn, ids, dagster_run_id="run-1", attempt=1, now=INSTANT)
    with engine.connect() as one, engine.connect() as two:
        one.begin()
        two.begin()
        took_one = call_places.take(one, ids[:1], dagster_run_id="run-1", cap=1, now=INSTANT)
        two.execute(sa.text("SET LOCAL lock_timeout = '500ms'"))
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
            call_places.take(two, ids[1:], dagster_run_id="run-1", cap=1, now=INSTANT)
        two.rollback()
        one.commit()
        two.begin()
        took_two = call_places.take(two, ids[1:], dagster_run_id="run-1", cap=1, now=INSTANT)
        two.commit()
    assert took_one.placed == {ids[0]} and took_two.placed == set()


def test_a_slot_that_waited_for_its_place_is_polled_for_its_whole_timeout_from_its_call(
    engine: sa.Engine,
) -> None:
    """Fault simulator finding (seeds 0 and 17, with places): the timeout ran from the fire.

    A slot that waited 50 minutes for a call place submitted then, and its API run ended
    after the fire's timeout and margin had passed: it was given up ``dispatch_lost`` while
    the API ran it, and its paid run had no receipt.
    """
    _claim(engine, {"alice": 1}, batch_size=10)
    called = INSTANT + dt.timedelta(minutes=50)
    with engine.begin() as conn:
        (ledger_id,) = conn.execute(sa.select(run_ledger.c.id)).scalars()
        slot_status.fire(conn, [ledger_id], dagster_run_id="run-1", attempt=1, now=INSTANT)
        call_places.take(conn, [ledger_id], dagster_run_id="run-1", cap=CAP, now=called)
        slot_status.keep_api_run(conn, ledger_id, "apirun_1")
        row = conn.execute(sa.select(run_ledger)).one()
    timeout = dt.timedelta(seconds=row.timeout_seconds or 3600)
    assert row.call_place_at is None  # its call ended without an outcome: place given back
    assert api_runs.give_up_at(row) == called + timeout + api_runs.GIVE_UP_MARGIN
    assert api_runs.api_may_still_run(row, INSTANT + timeout + api_runs.GIVE_UP_MARGIN)


def test_a_call_that_ends_without_an_outcome_gives_its_place_to_the_next(
    engine: sa.Engine, execution_api: RunningApi
) -> None:
    """Fault simulator finding (seed 0, half an hour): a run waited on its own places.

    Its calls that ended without an outcome (polls past the timeout) kept their places
    while the run waited for one for its next slot: the run renewed its lease for ever and
    fired nothing more.
    """
    (batch_id,) = _claim(engine, {"alice": 2}, batch_size=10, runs_for=1000, timeout_seconds=60)
    current = [CLAIMED]
    seconds = [0.0]

    async def sleep(delay: float) -> None:
        current[0] += dt.timedelta(seconds=delay)
        await asyncio.sleep(0.001)

    async def poll_sleep(delay: float) -> None:
        seconds[0] += delay
        execution_api.store.clock.now += delay  # type: ignore[attr-defined]
        await sleep(delay)

    dispatcher = Dispatcher(
        engine,
        ConcurrentCaller(
            execution_api.url,
            execution_api.token,
            max_per_account=1,
            poll_interval_seconds=5,
            sleep=poll_sleep,
            clock=lambda: seconds[0],
        ),
        dagster_run_id="run-1",
        clock=lambda: current[0],
        sleep=sleep,
        limits=LIMITS,
    )
    report = asyncio.run(asyncio.wait_for(dispatcher.run_batch(batch_id, 1), timeout=60))
    assert report.fired == 2 and len(report.unrecorded) == 2
    assert execution_api.store.executions == 2  # the second slot got the first's place
    with engine.connect() as conn:
        left = list(conn.execute(sa.select(run_ledger)))
        assert call_places.held(conn, ["alice-billing"]) == {}
    assert {r.status for r in left} == {"running"} and all(r.api_run_id for r in left)
