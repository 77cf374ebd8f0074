"""Dispatch benchmarks: a real dagster-daemon on the shipped dagster.yaml (``make bench``).

Skipped by ``make test`` (they use pytest-benchmark's fixture). Each writes its figures to
``.graph_runs/bench/`` and prints a table:

- aligned burst: ``BENCH_N`` every-minute schedules (default 1,000) due at one instant; lag
  from the instant to the API request, slots/s, and the same API's rate under a bare async
  httpx client, measured in the same run;
- steady state: 20 schedules at different minutes over five minutes;
- tick cost: one sensor tick at 1k, 10k and 100k schedules with 1% due, on each backend;
- the concurrent caller a dispatch run fires slots with, against the bare client, on the
  same API in the same run: the ceiling of a dispatch run here.

``BENCH_DEADLINE_SECONDS`` (default 900) bounds the wait for a burst's slots: slots not
requested by then are reported as such, not waited for. The dispatch settings
(``GRAPH_RUNS_BATCH_SIZE`` and the others in ``DISPATCH_VARS``) reach the daemon when set, so
that a size can be chosen by measurement.
"""

import datetime as dt
import os
import statistics
import time
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.access.grants import create_grant
from graph_runs.core.cron import format_utc
from graph_runs.core.schedule_spec import UNLIMITED
from graph_runs.dispatch.batches import BATCH_ID_TAG
from graph_runs.dispatch.ledger import TAG_PREFIX
from graph_runs.scheduling.schedules import create_schedule
from graph_runs.sensors.graph_schedules_sensor import SensorCursor
from graph_runs.settings import (
    ACCOUNT_BATCHES_VAR,
    BATCH_SIZE_VAR,
    DISPATCH_LEASE_VAR,
    LAUNCH_ALLOWANCE_VAR,
    MAX_CALLS_PER_ACCOUNT_VAR,
    MAX_CONCURRENT_CALLS_VAR,
    PARALLEL_RUNS_VAR,
    SLOT_ASSET_EVENTS_VAR,
)
from graph_runs.store.tables import charge_receipts, dispatch_batches, run_ledger
from tests.benchmarks.harness import (
    RecordingApi,
    bare_client_rate,
    caller_rate,
    insert_schedules,
    lag_summary,
    plot_lags,
    reset_due,
    seconds,
    show,
    write_report,
)
from tests.dagster_helpers import make_resources, tick
from tests.e2e.conftest import Stack

BARE_CONCURRENCY = 50
DISPATCH_VARS = (
    BATCH_SIZE_VAR,
    PARALLEL_RUNS_VAR,
    ACCOUNT_BATCHES_VAR,
    MAX_CONCURRENT_CALLS_VAR,
    MAX_CALLS_PER_ACCOUNT_VAR,
    SLOT_ASSET_EVENTS_VAR,
    LAUNCH_ALLOWANCE_VAR,
    DISPATCH_LEASE_VAR,
)
OWNERS_OF = 100  # schedules per owner, the default limit
BATCH_SIZE_TAG = f"{TAG_PREFIX}batch_size"


def _on_the_shipped_instance(stack: Stack, database_url: str) -> tuple[int, float, str]:
    """The settings (N, deadline, sensor interval); only the shipped dagster.yaml is timed."""
    if database_url.startswith("postgresql"):
        pytest.skip("timed on the shipped dagster.yaml, whose storage is SQLite")
    interval = os.environ.get("BENCH_SENSOR_INTERVAL_SECONDS", "30")
    stack.env["GRAPH_RUNS_SENSOR_INTERVAL_SECONDS"] = interval
    stack.env.update({name: os.environ[name] for name in DISPATCH_VARS if name in os.environ})
    return (
        int(os.environ.get("BENCH_N", "1000")),
        float(os.environ.get("BENCH_DEADLINE_SECONDS", "900")),
        interval,
    )


def _next_minute(after: dt.datetime) -> dt.datetime:
    return (after + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)


def _make_schedules(engine: sa.Engine, crons: list[str], **fields: Any) -> list[str]:
    """Schedules of the echo graph, OWNERS_OF per owner, each owner with a grant."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ids = []
    with engine.begin() as conn:
        grant = None
        for i, cron in enumerate(crons):
            if i % OWNERS_OF == 0:
                owner = f"bench-{i // OWNERS_OF}"
                grant = create_grant(
                    conn, owner=owner, billing_account=owner, scopes=["graph:execute:*"], now=now
                )
            assert grant is not None
            raw = {"owner": grant.owner, "graph_id": "echo", "input": {"n": i}, "cron": cron}
            view = create_schedule(
                conn, {**raw, "grant_id": grant.id, **fields}, limits=UNLIMITED, now=now
            )
            ids.append(view["id"])
    return ids


def _wait_for_keys(api: RecordingApi, keys: set[str], stack: Stack, until: float) -> None:
    """Poll the recorded arrivals (bounded by ``until``) until every key has arrived."""
    while time.time() < until:
        for process in stack.processes:
            assert process.poll() is None, f"{process.args} exited:\n{stack.output()}"
        if keys <= api.first_arrival().keys():
            return
        time.sleep(0.5)


def _unbilled(engine: sa.Engine, keys: set[str], until: float) -> tuple[int, int]:
    """(succeeded, succeeded without a receipt) among ``keys``, once their rows are final."""
    query = (
        sa.select(run_ledger.c.status, charge_receipts.c.id)
        .select_from(
            run_ledger.outerjoin(charge_receipts, charge_receipts.c.graph_run_id == run_ledger.c.id)
        )
        .where(run_ledger.c.idempotency_key.in_(sorted(keys)))
    )
    while True:
        with engine.connect() as conn:
            rows = list(conn.execute(query))
        final = [r for r in rows if r.status in ("succeeded", "failed")]
        if len(final) == len(keys) or time.time() >= until:
            succeeded = [r for r in final if r.status == "succeeded"]
            return len(succeeded), sum(r.id is None for r in succeeded)
        time.sleep(0.5)


def _announced_after(
    engine: sa.Engine, keys: set[str], instant: float, until: float
) -> float | None:
    """Seconds from the instant until the slot events sensor has taken every outcome."""
    query = sa.select(sa.func.count()).where(
        run_ledger.c.idempotency_key.in_(sorted(keys)),
        sa.or_(run_ledger.c.announce_tick.is_(None), run_ledger.c.announce_tick > 0),
    )
    while time.time() < until:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one() == len(keys):
                return time.time() - instant
        time.sleep(0.5)
    return None


def _launch_timeline(
    stack: Stack, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, instant: dt.datetime
) -> dict[str, Any]:
    """When the slots were claimed and their runs created and started, from the instant.

    What bounds the first lag: a run must be up before the instant, and the claim comes
    between the lookahead and the lookahead less one interval before it.
    """
    with engine.connect() as conn:
        claimed = [
            (at - instant).total_seconds()
            for at in conn.execute(sa.select(dispatch_batches.c.created_at)).scalars()
        ]
    with stack.instance(monkeypatch) as instance:
        records = [r for r in instance.get_run_records() if BATCH_ID_TAG in r.dagster_run.tags]
        runs = [
            {
                "created_s": r.create_timestamp.timestamp() - instant.timestamp(),
                "started_s": None if r.start_time is None else r.start_time - instant.timestamp(),
                "slots": int(r.dagster_run.tags.get(BATCH_SIZE_TAG, 0)),
                "status": r.dagster_run.status.value,
            }
            for r in records
        ]
    runs.sort(key=lambda run: run["created_s"])
    return {"claimed_s": sorted(set(claimed)), "runs": runs}


def _runs_line(runs: list[dict[str, Any]]) -> str:
    def started(run: dict[str, Any]) -> str:
        return "-" if run["started_s"] is None else f"{run['started_s']:.1f}"

    return ", ".join(f"{run['slots']} at {started(run)}" for run in runs)


def test_aligned_burst(
    benchmark,
    stack: Stack,
    engine: sa.Engine,
    execution_api: RecordingApi,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n, deadline, interval = _on_the_shipped_instance(stack, database_url)
    # Far enough ahead that the daemon is up and the partitions exist before the instant.
    instant = _next_minute(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=70))
    ids = _make_schedules(
        engine,
        ["* * * * *"] * n,
        start_at=format_utc(instant),
        end_at=format_utc(instant + dt.timedelta(seconds=30)),
    )
    keys = {f"sched:{schedule_id}:{format_utc(instant)}" for schedule_id in ids}
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")

    def burst() -> None:
        _wait_for_keys(execution_api, keys, stack, instant.timestamp() + deadline)

    benchmark.pedantic(burst, rounds=1, iterations=1)
    first = execution_api.first_arrival()
    arrived = keys & first.keys()
    lags = [first[key] - instant.timestamp() for key in arrived]
    posts = sum(1 for _, key in execution_api.arrivals() if key in keys)
    executions = execution_api.executions()
    succeeded, unbilled = _unbilled(engine, arrived, time.time() + 120)
    announced = _announced_after(engine, keys, instant.timestamp(), time.time() + 180)
    timeline = _launch_timeline(stack, engine, monkeypatch, instant)
    bare = bare_client_rate(execution_api, max(n, 1000), BARE_CONCURRENCY)
    lag = lag_summary(lags)
    rate = len(arrived) / lag["last"] if lag["last"] else None
    result = {
        "slots": n,
        "sensor_interval_seconds": int(interval),
        "dispatch_settings": {name: stack.env.get(name, "default") for name in DISPATCH_VARS},
        "instant": format_utc(instant),
        "requested": len(arrived),
        "not_requested_within_deadline": n - len(arrived),
        "lag_seconds": lag,
        "slots_per_s": rate,
        "repeat_posts": posts - len(arrived),
        "duplicate_executions": executions - len(arrived),
        "succeeded": succeeded,
        "succeeded_without_receipt": unbilled,
        "bare_client": bare,
        "ratio_to_bare_client": None if rate is None else rate / bare["per_s"],
        "launch": timeline,
        "outcomes_taken_for_events_after_s": announced,
    }
    write_report("burst", result)
    if lags:
        plot_lags("burst_lag", lags, f"{n} aligned slots, sensor interval {interval} s")
    show(
        f"Aligned burst: {n} slots due at one instant (sensor interval {interval} s)",
        [
            ("requested / due", f"{len(arrived)} / {n}"),
            ("first lag", seconds(lag["first"])),
            ("median lag", seconds(lag["p50"])),
            ("p99 lag", seconds(lag["p99"])),
            ("last lag", seconds(lag["last"])),
            ("slots/s", "-" if rate is None else f"{rate:.2f}"),
            ("bare httpx client, req/s", f"{bare['per_s']:.0f} (concurrency {BARE_CONCURRENCY})"),
            ("ratio to the bare client", "-" if rate is None else f"{rate / bare['per_s']:.4f}"),
            ("duplicate executions", str(result["duplicate_executions"])),
            ("succeeded without a receipt", f"{unbilled} of {succeeded}"),
            ("every outcome taken by slot_events_sensor, s from the instant", seconds(announced)),
            ("claimed, s from the instant", ", ".join(f"{c:.1f}" for c in timeline["claimed_s"])),
            ("dispatch runs: slots at start, s from the instant", _runs_line(timeline["runs"])),
        ],
    )
    assert result["duplicate_executions"] == 0
    assert unbilled == 0


def test_steady_state(
    benchmark, stack: Stack, engine: sa.Engine, execution_api: RecordingApi, database_url: str
) -> None:
    _, _, interval = _on_the_shipped_instance(stack, database_url)
    first_minute = _next_minute(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=70))
    instants = [first_minute + dt.timedelta(minutes=i // 4) for i in range(20)]
    ids = _make_schedules(engine, [f"{at.minute} * * * *" for at in instants])
    due = {
        f"sched:{schedule_id}:{format_utc(at)}": at.timestamp()
        for schedule_id, at in zip(ids, instants, strict=True)
    }
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")

    def steady() -> None:
        _wait_for_keys(execution_api, set(due), stack, instants[-1].timestamp() + 180)

    benchmark.pedantic(steady, rounds=1, iterations=1)
    first = execution_api.first_arrival()
    lags = [first[key] - at for key, at in due.items() if key in first]
    lag = lag_summary(lags)
    write_report(
        "steady",
        {"slots": len(due), "requested": len(lags), "lag_seconds": lag, "interval": interval},
    )
    show(
        f"Steady state: 20 schedules over 5 minutes (sensor interval {interval} s)",
        [
            ("requested / due", f"{len(lags)} / {len(due)}"),
            ("median lag", seconds(lag["p50"])),
            ("p99 lag", seconds(lag["p99"])),
        ],
    )
    assert len(lags) == len(due)


TICK_NOW = dt.datetime(2026, 11, 23, 9, 0, 5, tzinfo=dt.UTC)
TICK_DUE = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
ROUNDS = 7


@pytest.mark.parametrize("size", [1_000, 10_000, 100_000])
def test_tick_cost(benchmark, engine: sa.Engine, database_url: str, size: int) -> None:
    due = size // 100
    with engine.begin() as conn:
        insert_schedules(
            conn, total=size, due=due, due_at=TICK_DUE, created=TICK_NOW - dt.timedelta(days=1)
        )
    # As autovacuum would have by then: without statistics, Postgres takes a freshly filled
    # table for a small one and scans all of it.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    cursor = SensorCursor(
        last_tick=TICK_NOW - dt.timedelta(seconds=30), last_full_sync=TICK_NOW
    ).serialize()
    resources = make_resources(database_url, None, format_utc(TICK_NOW))
    requested: list[int] = []
    with dg.instance_for_test() as instance:
        keys = [f"sch_{i:07d}" for i in range(size)]
        for start in range(0, size, 20_000):
            instance.add_dynamic_partitions("graph_run_schedules", keys[start : start + 20_000])

        def reset() -> None:
            reset_due(engine, TICK_DUE)

        def one_tick() -> None:
            requested.append(len(tick(instance, resources, cursor).run_requests or []))

        benchmark.pedantic(one_tick, setup=reset, rounds=ROUNDS, iterations=1)
    # Every round claimed every due slot into batches, not a no-op on an earlier round's.
    assert len(set(requested)) == 1 and requested[0] >= 1
    with engine.connect() as conn:
        batched = conn.execute(sa.select(sa.func.sum(dispatch_batches.c.size))).scalar()
    assert batched == due
    backend = "postgres" if database_url.startswith("postgresql") else "sqlite"
    median = statistics.median(benchmark.stats.stats.data)
    write_report(
        f"tick_{backend}_{size}",
        {"schedules": size, "due": due, "run_requests": requested[0], "median_s": median},
    )
    show(
        f"Sensor tick, {backend} schedules database",
        [(f"{size:,} schedules, {due:,} due", f"{median:.3f} s")],
    )


def test_concurrent_caller_against_the_bare_client(benchmark, execution_api: RecordingApi) -> None:
    n = 2_000
    rounds: dict[str, list[float]] = {"bare": [], "caller": []}

    def both() -> None:  # alternated, so that the machine's noise falls on both alike
        rounds["bare"].append(bare_client_rate(execution_api, n, BARE_CONCURRENCY)["per_s"])
        rounds["caller"].append(caller_rate(execution_api, n, BARE_CONCURRENCY)["per_s"])

    benchmark.pedantic(both, rounds=3, iterations=1)
    bare, caller = (statistics.median(rounds[name]) for name in ("bare", "caller"))
    write_report("caller", {"requests": n, "bare_per_s": bare, "caller_per_s": caller, **rounds})
    show(
        f"Concurrent caller vs bare async httpx client: {n:,} requests, 50 at a time, median of 3",
        [
            ("bare client, req/s", f"{bare:.0f}"),
            ("concurrent caller, req/s", f"{caller:.0f}"),
            ("ratio", f"{caller / bare:.2f}"),
        ],
    )
