"""A deterministic world for the fault simulator: virtual time, a faulty API, Dagster's runs.

Everything of ours is the real code: the sensor's tick (``dispatch.tick.claim_and_batch``,
``dispatch.batches.assess`` and ``recover``), the dispatch run
(``dispatch.dispatcher.Dispatcher``, with its real ``ConcurrentCaller`` over httpx), the
Python API users call, on a real SQLite file or PostgreSQL database. What is simulated is
what is not ours:

- **time**: one virtual clock. Every sleep (the dispatch run's, its heartbeat's, the
  caller's backoff and polls, the API's latency) waits on it, and the world moves it to the
  next wake-up once every task is blocked. Database calls made through ``asyncio.to_thread``
  run inline, so a seed replays exactly;
- **the execution API**: the local server's app (``execution_api.local.server``, the
  contract with its idempotency store) behind a transport that, by the seed, adds latency,
  answers 503 or 429 with ``Retry-After``, resets the connection, times out after the API
  accepted the request, or answers a poll off the contract;
- **Dagster's run storage**: a run per run key, queued, slow or quick to start, killed
  (its status left STARTED or reported FAILURE), frozen and woken late, or cancelled by a
  person.
"""

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import heapq
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa

from graph_runs.dispatch.dispatcher import Dispatcher, DispatchLimits
from graph_runs.execution_api.client import RetryPolicy
from graph_runs.execution_api.concurrent_calls import ConcurrentCaller
from graph_runs.execution_api.local.server import ExecutionStore, create_app

TOKEN = "simulated-token-0123456789"
EPOCH = dt.datetime(2026, 11, 23, 8, 0, tzinfo=dt.UTC)


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs what ``asyncio.to_thread`` hands it at once, in the loop's thread.

    No races between threads, so one seed is one interleaving.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(exc)
        return future


class VirtualTime:
    """The one clock; ``sleep`` waits for it to reach the sleeper's wake-up."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start
        self._sleepers: list[tuple[dt.datetime, int, asyncio.Future[None]]] = []
        self._seq = 0

    def monotonic(self) -> float:
        return (self.now - EPOCH).total_seconds()

    def wall(self) -> float:
        return self.now.timestamp()

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._seq += 1
        when = self.now + dt.timedelta(seconds=max(seconds, 0.0))
        heapq.heappush(self._sleepers, (when, self._seq, future))
        await future

    def next_wake(self) -> dt.datetime | None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # a sleeper cancelled meanwhile
        return self._sleepers[0][0] if self._sleepers else None

    def wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _when, _seq, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


@dataclass
class Faults:
    """How often each fault strikes; a seed draws the actual ones."""

    api_503: float = 0.03
    api_429: float = 0.02
    api_reset: float = 0.02
    api_timeout_after_accept: float = 0.02
    poll_off_contract: float = 0.02
    kill_run: float = 0.03
    freeze_run: float = 0.03
    cancel_run: float = 0.01
    slow_start: float = 0.1
    tick_dies: float = 0.03
    db_error: float = 0.002
    # The whole host stops and resumes (a suspended VM, a stalled daemon): at a tick, time
    # leaps ahead, and every sleeper wakes late at once.
    clock_jump: float = 0.01
    # A run's machine steps its clock (NTP), to another skew behind the sensor's.
    clock_step: float = 0.01

    @classmethod
    def none(cls) -> "Faults":
        """No fault at all: the final settling."""
        return cls(**{f.name: 0.0 for f in dataclasses.fields(cls)})


class FaultyApi(httpx.AsyncBaseTransport):
    """The local API's app, in-process, behind the faults a real peer has.

    It records when each idempotency key's submission first reached the API, so that the
    simulator can check nothing fired before its instant.
    """

    def __init__(self, time: VirtualTime, rng: random.Random, faults: Faults) -> None:
        self.time, self.rng, self.faults = time, rng, faults
        self.store = ExecutionStore(clock=time.monotonic)
        self.inner = httpx.ASGITransport(app=create_app(TOKEN, self.store))
        self.first_seen: dict[str, dt.datetime] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        f, draw = self.faults, self.rng.random()
        await self.time.sleep(self.rng.choice((0.0, 0.05, 0.3, 2.0)))
        if draw < f.api_503:
            return httpx.Response(503, json={"error": {"code": "busy", "message": "503"}})
        draw -= f.api_503
        if draw < f.api_429:
            return httpx.Response(
                429, headers={"Retry-After": "3"}, json={"error": {"code": "slow", "message": ""}}
            )
        draw -= f.api_429
        if draw < f.api_reset:
            raise httpx.ConnectError("connection reset by the simulated peer", request=request)
        draw -= f.api_reset
        key = request.headers.get("idempotency-key", "")
        if request.method == "POST":
            self.first_seen.setdefault(key, self.time.now)
        response = await self.inner.handle_async_request(request)
        if draw < f.api_timeout_after_accept:
            raise httpx.ReadTimeout("accepted, then no answer", request=request)
        draw -= f.api_timeout_after_accept
        if request.method == "GET" and draw < f.poll_off_contract:
            return httpx.Response(200, content=b"<html>gateway</html>")
        return response


@dataclass
class SimRun:
    """A Dagster run, as Dagster's run storage would hold it.

    Of one batch attempt (``dispatch_batch_job``), or of one approved slot (``graph_run_job``,
    run key the approval id, ``ledger_id`` its slot).
    """

    run_id: str
    batch_id: str | None
    attempt: int
    ledger_id: str | None = None
    status: str = "QUEUED"
    starts_at: dt.datetime | None = None
    frozen_until: dt.datetime | None = None
    task: asyncio.Task[Any] | None = None
    # The run's machine's clock minus the sensor's: behind, never ahead (a run whose clock
    # is ahead waits for the database's clock, the machine's real one, which the simulated
    # hours cannot move; tests/graph_runs/dispatch/test_clocks.py covers that).
    skew: dt.timedelta = dt.timedelta(0)
    # When its process died; run monitoring fails a run left STARTED some minutes later.
    died_at: dt.datetime | None = None


@dataclass
class Dagster:
    """Run storage and a launcher: run keys are unique, runs start, end, die, or hang."""

    runs: dict[str, SimRun] = field(default_factory=dict)  # by run key

    def by_key(self, key: str) -> SimRun | None:
        return self.runs.get(key)

    def going(self) -> list[SimRun]:
        return [r for r in self.runs.values() if r.task is not None and not r.task.done()]


def seeded_ids(rng: random.Random) -> Callable[[], uuid.UUID]:
    """``uuid.uuid4`` drawn from the seed, so that ids (and the orders they set) replay."""
    return lambda: uuid.UUID(int=rng.getrandbits(128), version=4)


# The per-account cap on calls in flight over all runs (graph_runs/dispatch/call_places.py).
CALLS_PER_ACCOUNT = 2


def make_caller(
    api: FaultyApi, time: VirtualTime, sleep: Callable[[float], Awaitable[None]] | None = None
) -> ConcurrentCaller:
    """A caller of the simulated API on the virtual clock."""
    return ConcurrentCaller(
        "http://simulated-api",
        TOKEN,
        retry=RetryPolicy(max_attempts=6, base_seconds=0.5, max_seconds=10),
        # Small, so that slots of one account wait for each other's call places.
        max_per_account=CALLS_PER_ACCOUNT,
        request_timeout_seconds=10,
        poll_interval_seconds=2,
        transport=api,
        sleep=sleep or time.sleep,
        clock=time.monotonic,
        wall_clock=time.wall,
    )


def make_dispatcher(
    engine: sa.Engine, api: FaultyApi, time: VirtualTime, run: SimRun, *, hand_off: float = 300
) -> Dispatcher:
    """The dispatch job's body for one run, every sleep of it frozen while the run is."""

    async def sleep(seconds: float) -> None:
        await time.sleep(seconds)
        while run.frozen_until is not None and time.now < run.frozen_until:
            await time.sleep((run.frozen_until - time.now).total_seconds())

    return Dispatcher(
        engine,
        make_caller(api, time, sleep),
        dagster_run_id=run.run_id,
        clock=lambda: time.now + run.skew,
        sleep=sleep,
        limits=DispatchLimits(
            lease=dt.timedelta(seconds=60),
            heartbeat_seconds=15,
            hand_off=dt.timedelta(seconds=hand_off),
        ),
    )


async def settle(rounds: int = 60) -> None:
    """Let every task that can go on do so, until each waits on the clock."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` on a loop whose default executor is inline."""
    loop = asyncio.new_event_loop()
    loop.set_default_executor(InlineExecutor())
    try:
        return loop.run_until_complete(main)
    finally:
        # What a killed run left behind (its calls, a heartbeat) ends with the world.
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()

        async def ended() -> None:
            await asyncio.gather(*left, return_exceptions=True)

        loop.run_until_complete(ended())
        loop.close()
