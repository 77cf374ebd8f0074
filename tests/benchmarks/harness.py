"""What the dispatch benchmarks share: a recording execution API, lag statistics, the report.

Results go to ``.graph_runs/bench/`` (JSON per benchmark, a PNG of the burst's lag
distribution) and to the terminal as one table row per figure, so that a run of
``make bench`` can be pasted into docs/benchmarks.md as it is.
"""

import asyncio
import datetime as dt
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from graph_runs.execution_api.concurrent_calls import Call, ConcurrentCaller
from graph_runs.store.tables import dispatch_batches, execution_grants, run_ledger, schedules
from tests.conftest import API_TOKEN

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OUT = REPO / ".graph_runs" / "bench"


@dataclass
class RecordingApi:
    """The local execution API in a process of its own, logging each submission's arrival."""

    url: str
    token: str
    log: Path

    def _entries(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def arrivals(self) -> list[tuple[float, str]]:
        """(wall-clock time, idempotency key) of every submission, in arrival order."""
        return [(e["arrived"], e["key"]) for e in self._entries() if "arrived" in e]

    def first_arrival(self) -> dict[str, float]:
        """The wall-clock time of the first submission of each idempotency key."""
        first: dict[str, float] = {}
        for at, key in self.arrivals():
            first.setdefault(key, at)
        return first

    def executions(self) -> int:
        """How many graph runs the API executed (a repeated key returns the first outcome)."""
        return sum("executed" in e for e in self._entries())


@contextmanager
def recording_api(workdir: Path) -> Iterator[RecordingApi]:
    """``graph-runs execution-api serve`` on a free loopback port, with a request log.

    A process of its own, as your API would be: served from a thread of the benchmark's
    process, it would share one interpreter lock with the bare client it is compared to.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = workdir / "requests.jsonl"
    process = subprocess.Popen(
        [
            str(BIN / "graph-runs"), "execution-api", "serve", "--port", str(port),
            "--token", API_TOKEN, "--request-log", str(log),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:  # readiness of a process we started, bounded
            assert process.poll() is None, "the execution API exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the execution API did not start"
                time.sleep(0.05)
        yield RecordingApi(f"http://127.0.0.1:{port}", API_TOKEN, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: a figure that one of the slots really had."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def lag_summary(lags: list[float]) -> dict[str, float | None]:
    """First, median, p99 and last lag, in seconds."""
    if not lags:
        return {"first": None, "p50": None, "p99": None, "last": None}
    return {
        "first": min(lags),
        "p50": statistics.median(lags),
        "p99": percentile(lags, 99),
        "last": max(lags),
    }


async def _bare_client(url: str, token: str, n: int, concurrency: int) -> float:
    limit = asyncio.Semaphore(concurrency)
    run = uuid.uuid4().hex[:8]
    body = json.dumps({"grant_id": "grt_bare", "input": {}, "trigger": {"kind": "api"}}).encode()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one(i: int) -> None:
            async with limit:
                response = await client.post(
                    f"{url}/api/internal/graphs/echo/runs",
                    content=body,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Idempotency-Key": f"bare:{run}:{i}",
                        "Content-Type": "application/json",
                    },
                )
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - started


async def _caller(url: str, token: str, n: int, concurrency: int) -> float:
    run = uuid.uuid4().hex[:8]
    body = {"grant_id": "grt_bare", "input": {}, "trigger": {"kind": "api"}}
    caller = ConcurrentCaller(url, token, max_concurrent=concurrency, max_per_account=concurrency)
    calls = [Call(f"caller:{run}:{i}", "echo", body, f"acct-{i % 10}") for i in range(n)]
    started = time.perf_counter()
    async for result in caller.run(calls, dagster_run_id="bench"):
        assert result.outcome is not None, result.error
    return time.perf_counter() - started


def _rate(
    client: Callable[[str, str, int, int], Awaitable[float]],
    api: RecordingApi,
    n: int,
    concurrency: int,
) -> dict[str, float]:
    seconds = asyncio.run(client(api.url, api.token, n, concurrency))
    return {"requests": n, "concurrency": concurrency, "seconds": seconds, "per_s": n / seconds}


def caller_rate(api: RecordingApi, n: int, concurrency: int) -> dict[str, float]:
    """graph-runs' concurrent caller (``http/concurrent_calls``) on the same API."""
    return _rate(_caller, api, n, concurrency)


def bare_client_rate(api: RecordingApi, n: int, concurrency: int) -> dict[str, float]:
    """The physical limit here: a bare async httpx client's submissions per second."""
    return _rate(_bare_client, api, n, concurrency)


def write_report(name: str, result: dict[str, Any]) -> Path:
    """Write ``result`` as ``.graph_runs/bench/{name}.json``; returns the path."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    return path


def plot_lags(name: str, lags: list[float], title: str) -> Path:
    """A histogram of the lags, as ``.graph_runs/bench/{name}.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.hist(lags, bins=min(60, max(10, len(lags) // 10)), color="#4c72b0")
    axes.set_xlabel("lag from the slot's instant to the API request (s)")
    axes.set_ylabel("slots")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# Tables shown at the end of the run (tests/benchmarks/conftest.py prints them).
TABLES: list[str] = []


def show(title: str, rows: list[tuple[str, str]]) -> None:
    """Keep a two-column markdown table for the run's summary."""
    width = max(len(name) for name, _ in rows)
    lines = [title, "", f"| {'figure'.ljust(width)} | value |", f"| {'-' * width} | ----- |"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    TABLES.append("\n".join(lines))


def seconds(value: float | None) -> str:
    """A duration for the table."""
    return "-" if value is None else f"{value:.2f} s"


def insert_schedules(
    conn: sa.Connection, *, total: int, due: int, due_at: dt.datetime, created: dt.datetime
) -> None:
    """``total`` schedules of one grant, 100 per owner; the first ``due`` due at ``due_at``.

    Written as rows, as another application would: building 100k through the API would
    take minutes. The others are due at noon, hours away.
    """
    conn.execute(
        execution_grants.insert().values(
            id="grt_b", owner="o", billing_account="b", scopes=["graph:execute:*"],
            connection_ids=[], created_at=created,
        )
    )  # fmt: skip
    for start in range(0, total, 10_000):
        conn.execute(
            schedules.insert(),
            [
                {
                    "id": f"sch_{i:07d}", "owner": f"o{i // 100}", "graph_id": "echo",
                    "input": {}, "cron": "* * * * *" if i < due else "0 12 * * *",
                    "timezone": "UTC", "grant_id": "grt_b", "created_at": created,
                    "updated_at": created,
                    "next_run_at": due_at if i < due else due_at.replace(hour=12),
                }
                for i in range(start, min(total, start + 10_000))
            ],
        )  # fmt: skip


def reset_due(engine: sa.Engine, due_at: dt.datetime) -> None:
    """Undo a claim of ``insert_schedules``'s due schedules, so the next round claims anew."""
    with engine.begin() as conn:
        conn.execute(run_ledger.delete())
        conn.execute(dispatch_batches.delete())
        conn.execute(
            schedules.update()
            .where(schedules.c.cron == "* * * * *")
            .values(next_run_at=due_at, runs_total=0, slot_cursor=None)
        )
