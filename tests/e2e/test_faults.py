"""End to end, under faults: real processes die, the database goes away, the API fails.

Each test ends with the same three checks, the promise graph-runs makes: every due slot has
exactly one ledger row with a final status, the API executed each slot exactly once, and
every succeeded slot has exactly one receipt, for that API run.

- The daemon is killed (SIGKILL, its whole process group) after a claim commits and before
  the claim's runs exist, then started again. Dagster's run table is held locked meanwhile
  (its storage is a Postgres database of this test's), so that no run can exist yet: the
  kill lands in that window every time, not by luck of timing.
- The schedules database (a private PostgreSQL cluster, see ``faults.PrivatePostgres``) is
  stopped while the API runs the slots and the sensor ticks, then started again.
- The execution API answers 503, hangs after executing, or resets the connection after
  executing, in turn, for a minute (``faults.FaultyProxy``), then recovers.

The clock that jumps is in ``test_clock_jumps.py``: an injected clock, not this machine's.
"""

import datetime as dt
import signal
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from graph_runs.core.statuses import FAILED, SETTLED
from graph_runs.store.db import make_engine, upgrade
from graph_runs.store.tables import dispatch_batches
from tests.conftest import RunningApi
from tests.e2e.conftest import Stack, assert_exactly_once, ledger, slot_runs, wait_for
from tests.e2e.faults import FaultyProxy, PrivatePostgres
from tests.helpers import make_grant, make_schedule

pytestmark = pytest.mark.e2e

FINAL = SETTLED | {FAILED}


def make_due_schedules(engine: sa.Engine, count: int, due: dt.datetime, **fields: Any) -> list[str]:
    """``count`` one-time schedules due at ``due``; returns their ids."""
    created = due - dt.timedelta(minutes=5)
    with engine.begin() as conn:
        grant = make_grant(conn, created)
        return [
            make_schedule(conn, created, grant, cron=None, run_at=due, **fields)["id"]
            for _ in range(count)
        ]


def all_final(engine: sa.Engine, count: int) -> bool:
    try:
        rows = ledger(engine)
    except sa.exc.OperationalError:
        return False  # the database is away; the deadline bounds the wait
    return len(rows) == count and all(r.status in FINAL for r in rows)


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_the_daemon_killed_between_a_claim_and_its_runs_loses_and_doubles_nothing(
    stack: Stack,
    engine: sa.Engine,
    execution_api: RunningApi,
    dagster_storage_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = 30
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")
    wait_for(lambda: "graph_schedules_sensor" in stack.output(), stack, "the sensor's first tick")
    dagster = make_engine(dagster_storage_url)
    try:
        with dagster.connect() as locker:
            locker.begin()
            # No run can be created, nor looked up, until this transaction ends.
            locker.exec_driver_sql("LOCK TABLE runs, run_tags IN ACCESS EXCLUSIVE MODE")
            due = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=20)
            schedule_ids = make_due_schedules(engine, count, due)

            def claimed() -> bool:
                rows = ledger(engine)
                return len(rows) == count and all(r.batch_id for r in rows)

            wait_for(claimed, stack, "the claim to commit")
            stack.stop(stack.processes[0], signal.SIGKILL)
            assert {r.status for r in ledger(engine)} == {"pending"}
            locker.rollback()
        with stack.instance(monkeypatch) as instance:
            assert slot_runs(instance) == []  # the claim's runs never came to exist
            stack.start("dagster-daemon", "run", "-w", "workspace.yaml")
            wait_for(lambda: all_final(engine, count), stack, "every slot's outcome")
            runs = slot_runs(instance)
            assert runs and all(r.tags.get("dagster/run_key") for r in runs)
            assert len({r.tags["dagster/run_key"] for r in runs}) == len(runs)
    finally:
        dagster.dispose()
    assert_exactly_once(engine, execution_api.store, schedule_ids)


@pytest.fixture
def private_postgres() -> Any:
    cluster = PrivatePostgres()
    try:
        admin_url = cluster.create()
        yield cluster, admin_url
    finally:
        cluster.destroy()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_schedules_database_away_mid_run_loses_and_doubles_nothing(
    stack: Stack, execution_api: RunningApi, private_postgres: tuple[PrivatePostgres, str]
) -> None:
    """The schedules live on the private cluster; Dagster's storage stays up (SQLite)."""
    cluster, admin_url = private_postgres
    name = f"graph_runs_{uuid.uuid4().hex[:8]}"
    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    stack.env["GRAPH_RUNS_DATABASE_URL"] = url
    store = execution_api.store
    count = 10
    due = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=10)
    schedule_ids = make_due_schedules(engine, count, due, graph_id="sleep", input={"seconds": 60})
    try:
        stack.start("dagster-daemon", "run", "-w", "workspace.yaml")
        # The API has every slot's run going; the dispatch run polls them.
        wait_for(lambda: store.executions == count, stack, "every slot to reach the API")
        engine.dispose()
        cluster.stop()
        # Ticks fail, the dispatch run cannot renew its lease; the API's runs end meanwhile,
        # so the dispatch run has outcomes it cannot record.
        store.clock.now += 3600  # type: ignore[attr-defined]
        time.sleep(15)  # the outage itself: real processes on a real clock
        cluster.start()
        wait_for(lambda: all_final(engine, count), stack, "every slot's outcome", timeout=420)
        assert_exactly_once(engine, store, schedule_ids)
        with engine.connect() as conn:
            attempts = conn.execute(sa.select(dispatch_batches.c.attempt)).scalars().all()
        # The outcomes the first dispatch run could not record were recorded by the next.
        assert attempts == [2], attempts
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_api_failing_for_a_minute_loses_and_doubles_nothing(
    stack: Stack, engine: sa.Engine, execution_api: RunningApi
) -> None:
    count = 6
    with FaultyProxy(execution_api.url) as proxy:
        stack.env["GRAPH_RUNS_EXECUTION_API_URL"] = proxy.url
        # A hung request counts as failed after 3 s, not 30: the minute holds more faults.
        stack.env["GRAPH_RUNS_API_REQUEST_TIMEOUT_SECONDS"] = "3"
        proxy.fail_for(60)
        due = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=15)
        schedule_ids = make_due_schedules(engine, count, due)
        stack.start("dagster-daemon", "run", "-w", "workspace.yaml")
        wait_for(lambda: all_final(engine, count), stack, "every slot's outcome", timeout=420)
    # Every kind of fault was met, and a hang or a reset came after the API had executed.
    assert set(proxy.faults) == {"503", "hang", "reset"}, proxy.faults
    assert_exactly_once(engine, execution_api.store, schedule_ids)
