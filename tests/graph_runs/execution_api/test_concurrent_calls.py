"""graph_runs.execution_api.concurrent_calls: many graph runs at once, within per-account bounds.

Real HTTP to the local execution API for the contract (each key executed once, a poll that
times out keeps the API run id and a later call resumes it); an httpx.MockTransport that
speaks the contract for the bounds and the retries. Time is injected: nothing waits on the
wall clock.
"""

import asyncio
import json
from collections import Counter

import httpx

from graph_runs.execution_api.client import RetryPolicy
from graph_runs.execution_api.concurrent_calls import Call, ConcurrentCaller, Result
from tests.conftest import RunningApi

BODY = {"grant_id": "grt_1", "input": {"q": "hi"}, "trigger": {"kind": "scheduled"}}


class FakeTime:
    """A monotonic clock that the caller's sleeps move forward."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def collect(caller: ConcurrentCaller, calls: list[Call]) -> list[Result]:
    async def gather() -> list[Result]:
        return [result async for result in caller.run(calls, dagster_run_id="dagster-1")]

    return asyncio.run(gather())


def test_two_hundred_calls_each_execute_once(execution_api: RunningApi) -> None:
    caller = ConcurrentCaller(execution_api.url, execution_api.token, max_concurrent=20)
    calls = [Call(f"sched:sch_{i % 7}:slot-{i}", "echo", BODY, f"acct-{i % 3}") for i in range(200)]
    results = collect(caller, calls)
    assert sorted(r.call.idempotency_key for r in results) == sorted(
        c.idempotency_key for c in calls
    )
    assert all(r.error is None and r.outcome and r.outcome.status == "succeeded" for r in results)
    assert len({r.outcome.api_run_id for r in results if r.outcome}) == 200
    assert execution_api.store.executions == 200


def test_the_global_and_per_account_bounds_hold_and_no_account_starves_another() -> None:
    in_flight: Counter[str] = Counter()
    most: Counter[str] = Counter()

    async def handler(request: httpx.Request) -> httpx.Response:
        account = json.loads(request.content)["account"]
        in_flight[account] += 1
        in_flight["all"] += 1
        most[account] = max(most[account], in_flight[account])
        most["all"] = max(most["all"], in_flight["all"])
        for _ in range(20):  # stay in flight while the other calls are scheduled
            await asyncio.sleep(0)
        in_flight[account] -= 1
        in_flight["all"] -= 1
        key = request.headers["Idempotency-Key"]
        return httpx.Response(200, json={"run_id": f"api-{key}", "status": "succeeded"})

    caller = ConcurrentCaller(
        "http://api.test",
        "t",
        max_concurrent=8,
        max_per_account=3,
        transport=httpx.MockTransport(handler),
    )
    big = [Call(f"a-{i}", "echo", {"account": "a"}, "a") for i in range(30)]
    small = [Call(f"b-{i}", "echo", {"account": "b"}, "b") for i in range(6)]
    order = [r.call.billing_account for r in collect(caller, big + small)]
    assert (most["a"], most["b"]) == (3, 3)
    assert most["all"] <= 8
    # Account b's six calls, queued behind a's thirty, finish long before a's last one.
    last_b = max(i for i, account in enumerate(order) if account == "b")
    assert last_b < len(big)


def test_retries_send_the_same_key_and_body_and_honour_retry_after() -> None:
    seen: list[tuple[str, str, bytes]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(
            (request.headers["X-Attempt"], request.headers["Idempotency-Key"], request.content)
        )
        if len(seen) < 3:
            return httpx.Response(503, headers={"Retry-After": "7"})
        return httpx.Response(200, json={"run_id": "apirun_1", "status": "succeeded"})

    clock = FakeTime()
    caller = ConcurrentCaller(
        "http://api.test",
        "t",
        retry=RetryPolicy(max_attempts=5, base_seconds=0.5, max_seconds=30),
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        clock=clock,
    )
    (result,) = collect(caller, [Call("sched:sch_1:slot", "echo", BODY)])
    assert result.outcome is not None and result.outcome.attempts == 3
    assert [attempt for attempt, _, _ in seen] == ["1", "2", "3"]
    assert len({(key, body) for _, key, body in seen}) == 1
    assert clock.slept == [7.0, 7.0]


def test_a_poll_that_times_out_keeps_the_run_and_a_later_call_resumes_it(
    execution_api: RunningApi,
) -> None:
    clock = FakeTime()
    caller = ConcurrentCaller(
        execution_api.url,
        execution_api.token,
        poll_interval_seconds=2,
        sleep=clock.sleep,
        clock=clock,
    )
    call = Call("sched:sch_1:slot", "sleep", {**BODY, "input": {"seconds": 30}}, timeout_seconds=10)
    (timed_out,) = collect(caller, [call])
    assert timed_out.error is not None and timed_out.error.code == "timeout"
    api_run_id = timed_out.error.api_run_id
    assert api_run_id is not None and timed_out.error.as_outcome().api_run_id == api_run_id

    execution_api.store.clock.now += 31  # type: ignore[attr-defined]
    (resumed,) = collect(caller, [Call(**{**call.__dict__, "api_run_id": api_run_id})])
    assert resumed.outcome is not None
    assert (resumed.outcome.status, resumed.outcome.api_run_id) == ("succeeded", api_run_id)
    assert resumed.outcome.usage is not None
    assert execution_api.store.executions == 1


def test_a_refusal_is_not_retried(execution_api: RunningApi) -> None:
    caller = ConcurrentCaller(execution_api.url, execution_api.token)
    (result,) = collect(caller, [Call("sched:sch_1:slot", "no-such-graph", BODY)])
    assert result.error is not None
    assert (result.error.code, result.error.http_status, result.error.attempts) == (
        "graph_not_found",
        404,
        1,
    )
    assert result.error.api_run_id is None


def test_an_answer_off_the_contract_ends_its_own_call_only() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["Idempotency-Key"] == "broken":
            return httpx.Response(202, json={"status": "queued"})  # no run_id
        return httpx.Response(200, json={"run_id": "apirun_ok", "status": "succeeded"})

    caller = ConcurrentCaller("http://api.test", "t", transport=httpx.MockTransport(handler))
    results = {
        r.call.idempotency_key: r
        for r in collect(caller, [Call(key, "echo", BODY) for key in ("ok-1", "broken", "ok-2")])
    }
    broken = results["broken"].error
    assert broken is not None and broken.code == "invalid_response"
    assert all(results[key].outcome is not None for key in ("ok-1", "ok-2"))
