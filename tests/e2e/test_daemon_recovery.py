"""End to end: a dispatch run's worker dies or hangs mid-batch, and no slot is lost or doubled.

A real dagster-daemon dispatches a batch of slots against the local execution API, which
keeps half of them running (its ``sleep`` graph on a clock the test holds still). The test
then stops that run's worker process, which the daemon's code server started, and nothing
else:

- ``killed``: SIGKILL. The code server that spawned the worker marks the run failed, and the
  sensor dispatches the unrecorded slots again because the run ended without them.
- ``frozen``: SIGSTOP, as a hung node or a partition looks. Dagster sees a live process and
  the run stays STARTED (the shipped dagster.yaml has no run monitoring), so only the
  batch's lease can tell: it expires and the sensor dispatches again. The worker is then
  woken, a zombie whose lease has moved on: it fires nothing more, and what it records
  changes nothing.

Either way the second attempt sends the same idempotency keys, the API answers the calls it
already executed, and every slot ends with one execution and one receipt.
"""

import datetime as dt
import io
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.dispatch import batches
from graph_runs.store.tables import charge_receipts, dispatch_batches, run_ledger
from tests.conftest import RunningApi
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import make_grant, make_schedule

pytestmark = pytest.mark.e2e

SLOTS = 20
# A run still STARTING gets the start timeout (180 s) to take its lease, a STARTED one a
# lease's worth. 6 s was too short for the latter once the suite ran in parallel: a second
# run's worker took longer to reach its op, and the sensor dispatched a third attempt.
LEASE_SECONDS = 15


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid the run worker reported in its "Started process for run" engine event."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data  # type: ignore[union-attr]
        pid = data.metadata.get("pid") if data else None
        if pid is not None:
            return int(pid.value)  # type: ignore[arg-type]
    return None


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is among ``pid``'s parents, so we only ever kill our own."""
    for _ in range(10):
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def local_ports(pid: int) -> list[int]:
    """The local TCP ports of ``pid``'s sockets: how PostgreSQL names its connections."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since it was listed
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def write_lock_held(pid: int, engine: sa.Engine, batch_id: str, dagster_home: Path) -> str | None:
    """What ``pid`` holds that the sensor or the next run would wait for.

    On PostgreSQL, any transaction it has open, in either database: the next run's asset
    event waits on the asset's row in Dagster's ``asset_keys``, which a worker frozen inside
    its own event's transaction keeps locked for good (CI hung on exactly that); and the
    batch's row, which the sensor moves to its next attempt. On SQLite, the schedules
    database and every file of Dagster's own storage, which a writer locks whole. None when
    nothing is held.
    """
    files = list(dagster_home.rglob("*.db"))
    if engine.dialect.name == "sqlite":
        files.append(Path(str(engine.url.database)))
    else:
        with engine.connect() as conn:
            busy = conn.execute(
                sa.text(
                    "SELECT datname FROM pg_stat_activity"
                    " WHERE client_port = ANY(:ports) AND state <> 'idle'"
                ),
                {"ports": local_ports(pid)},
            ).scalars()
            held = sorted(set(busy))
        if held:
            return f"a transaction in {', '.join(held)}"
        try:
            with engine.connect() as conn, conn.begin():
                conn.execute(
                    sa.select(dispatch_batches.c.id)
                    .where(dispatch_batches.c.id == batch_id)
                    .with_for_update(nowait=True)
                )
        except sa.exc.OperationalError:
            return f"the row of {batch_id}"
    for path in files:
        probe = sqlite3.connect(path, timeout=0.1, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError:
            return str(path)
        finally:
            probe.close()
    return None


def freeze_outside_a_write(pid: int, engine: sa.Engine, batch_id: str, dagster_home: Path) -> None:
    """SIGSTOP the worker at a moment it holds no write lock that others need.

    A worker frozen inside a write would stop the whole instance on SQLite (and the sensor's
    move of the batch on PostgreSQL) until it is woken: a fault of its own, not the hung
    worker whose lease this test is about. So it is frozen and probed; if it was inside a
    write, it is thawed for a tenth of a second (its write takes milliseconds) and frozen
    again. Bounded: a worker that is always writing fails the test, naming what it held.
    """
    held = None
    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        held = write_lock_held(pid, engine, batch_id, dagster_home)
        if held is None:
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.1)  # a real process finishing its write, not a clock the test could move
    raise AssertionError(f"at each of 50 freezes a write lock was held, last on {held}")


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_dead_or_hung_dispatch_worker_loses_no_slot_and_executes_none_twice(
    fault: str,
    stack: Stack,
    engine: sa.Engine,
    execution_api: RunningApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = execution_api.store
    arrivals = io.StringIO()
    store.request_log = arrivals
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with engine.begin() as conn:
        grant = make_grant(conn, now - dt.timedelta(minutes=5))
        quick = [
            make_schedule(conn, now, grant, cron=None, run_at=now, graph_id="echo")
            for _ in range(SLOTS // 2)
        ]
        slow = [
            make_schedule(
                conn, now, grant, cron=None, run_at=now, graph_id="sleep", input={"seconds": 600}
            )
            for _ in range(SLOTS // 2)
        ]
    stack.env["GRAPH_RUNS_DISPATCH_LEASE_SECONDS"] = str(LEASE_SECONDS)
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")
    daemon = stack.processes[0].pid

    def ledger() -> list[sa.Row]:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(run_ledger)))

    def statuses(schedule_ids: list[dict]) -> set[str]:
        ids = {s["id"] for s in schedule_ids}
        return {r.status for r in ledger() if r.schedule_id in ids}

    def posts() -> dict[str, int]:
        counts: dict[str, int] = {}
        with store.lock:
            lines = arrivals.getvalue().splitlines()
        for entry in map(json.loads, lines):
            if "arrived" in entry:
                counts[entry["key"]] = counts.get(entry["key"], 0) + 1
        return counts

    # Mid-batch: the quick slots are recorded, the slow ones executed at the API and polled.
    wait_for(lambda: statuses(quick) == {"succeeded"}, stack, "the quick slots' outcomes")
    wait_for(lambda: store.executions == SLOTS, stack, "every slot to reach the API")
    assert statuses(slow) == {"running"}
    (batch_id,) = {r.batch_id for r in ledger()}
    with stack.instance(monkeypatch) as instance:
        (first,) = instance.get_runs(dg.RunsFilter(tags={batches.BATCH_ID_TAG: batch_id}))
        assert first.job_name == "dispatch_batch_job"
        wait_for(lambda: worker_pid(instance, first.run_id) is not None, stack, "the worker pid")
        pid = worker_pid(instance, first.run_id)
        assert pid is not None and descends_from(pid, daemon), "not a process this test started"
        if fault == "killed":
            os.kill(pid, signal.SIGKILL)
        else:
            freeze_outside_a_write(pid, engine, batch_id, stack.dagster_home)

        # The lease runs out, and the sensor dispatches the slow slots again, same keys.
        slow_keys = {r.idempotency_key for r in ledger() if r.status == "running"}
        wait_for(
            lambda: all(posts().get(key) == 2 for key in slow_keys),
            stack,
            "the second attempt to send the unrecorded slots again",
            # A bound on a hung test, not a speed check: the lease (15 s), a sensor tick and a
            # run's launch took over 180 s once on this 2-core machine under a parallel load.
            timeout=420,
        )
        store.clock.now += 3600  # type: ignore[attr-defined]  # the API's runs end
        wait_for(lambda: statuses(slow) == {"succeeded"}, stack, "the slow slots' outcomes")

        runs = instance.get_runs(dg.RunsFilter(tags={batches.BATCH_ID_TAG: batch_id}))
        second = next(r for r in runs if r.run_id != first.run_id)
        wait_for(
            lambda: instance.get_run_by_id(second.run_id).is_finished,  # type: ignore[union-attr]
            stack,
            "the second dispatch run to end",
        )
        assert len(runs) == 2
        assert second.tags[batches.BATCH_ATTEMPT_TAG] == "2"
        assert instance.get_run_by_id(second.run_id).status == dg.DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
        if fault == "frozen":
            # Dagster still thinks the hung run works: the lease alone moved the batch on.
            assert instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.STARTED  # type: ignore[union-attr]
            os.kill(pid, signal.SIGCONT)
            wait_for(
                lambda: instance.get_run_by_id(first.run_id).is_finished,  # type: ignore[union-attr]
                stack,
                "the woken zombie run to end",
            )
        else:
            assert instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]

    rows = ledger()
    with engine.connect() as conn:
        receipts = list(conn.execute(sa.select(charge_receipts)))
        batch = conn.execute(
            sa.select(dispatch_batches).where(dispatch_batches.c.id == batch_id)
        ).one()
    assert {r.status for r in rows} == {"succeeded"}
    assert (batch.status, batch.attempt) == ("done", 2)
    # Exactly once: one execution per slot at the API, one receipt per slot, for that run.
    assert store.executions == SLOTS
    assert sorted((r.graph_run_id, r.api_run_id) for r in receipts) == sorted(
        (r.id, r.api_run_id) for r in rows
    )
    assert len({r.api_run_id for r in rows}) == SLOTS
    # A recorded slot was never sent again; an unrecorded one once more, with its own key.
    sent = posts()
    assert sorted(sent.values()) == [1] * (SLOTS // 2) + [2] * (SLOTS // 2)
    assert {k for k, n in sent.items() if n == 2} == slow_keys
