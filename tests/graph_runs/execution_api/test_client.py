"""graph_runs.execution_api.client: the contract's client side.

Retries are driven by an httpx.MockTransport that speaks the contract (503s, 429 with
Retry-After, refusals) and an injected sleep, so no test waits on the wall clock; the happy
paths run against the real local execution API over HTTP.
"""

import json

import httpx
import pytest

from graph_runs.execution_api.client import ExecutionApiClient, ExecutionApiError, RetryPolicy
from tests.conftest import RunningApi

BODY = {
    "grant_id": "grt_1",
    "input": {"q": "hi"},
    "trigger": {"kind": "scheduled", "source": "s", "ref": "r", "requested_by": None},
    "schedule_id": "sch_1",
    "scheduled_for": "2026-11-22T10:00:00Z",
    "limits": {"max_cost_usd": None, "timeout_seconds": None},
    "connection_ids": [],
}
TERMINAL = {
    "run_id": "apirun_1",
    "status": "succeeded",
    "output": {"ok": True},
    "error": None,
    "usage": {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
        "cost_usd": "0.00001",
        "model": "m",
    },
}


class Recorder:
    def __init__(self, answers: list[httpx.Response | Exception]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client_for(recorder: Recorder, sleeps: list[float], **retry: float) -> ExecutionApiClient:
    return ExecutionApiClient(
        base_url="http://api.test",
        token="t",
        retry=RetryPolicy(**retry),  # type: ignore[arg-type]
        transport=httpx.MockTransport(recorder),
        sleep=sleeps.append,
    )


def run(client: ExecutionApiClient):
    return client.run(
        graph_id="echo", body=BODY, idempotency_key="sched:sch_1:x", dagster_run_id="d1"
    )


def test_retries_5xx_429_and_timeouts_with_the_same_body_and_growing_attempts() -> None:
    recorder = Recorder(
        [
            httpx.Response(503),
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.ConnectTimeout("slow"),
            httpx.Response(200, json=TERMINAL),
        ]
    )
    sleeps: list[float] = []
    outcome = run(client_for(recorder, sleeps, base_seconds=1, max_seconds=30))
    assert (outcome.status, outcome.attempts, outcome.api_run_id) == ("succeeded", 4, "apirun_1")
    assert sleeps == [1, 7, 4]
    assert [r.headers["X-Attempt"] for r in recorder.requests] == ["1", "2", "3", "4"]
    assert len({r.content for r in recorder.requests}) == 1
    assert json.loads(recorder.requests[0].content) == BODY
    assert {r.headers["Idempotency-Key"] for r in recorder.requests} == {"sched:sch_1:x"}
    assert recorder.requests[0].headers["X-Dagster-Run-Id"] == "d1"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_refusals_are_not_retried(status: int) -> None:
    recorder = Recorder(
        [httpx.Response(status, json={"error": {"code": "scope_denied", "message": "no"}})]
    )
    with pytest.raises(ExecutionApiError) as caught:
        run(client_for(recorder, []))
    assert (caught.value.code, caught.value.http_status, caught.value.attempts) == (
        "scope_denied",
        status,
        1,
    )


def test_exhausted_retries_give_a_clear_error() -> None:
    recorder = Recorder([httpx.Response(502)] * 3)
    sleeps: list[float] = []
    with pytest.raises(ExecutionApiError, match="after 3 attempts: HTTP 502") as caught:
        run(client_for(recorder, sleeps, max_attempts=3, base_seconds=0.5, max_seconds=0.75))
    assert caught.value.code == "api_unavailable" and sleeps == [0.5, 0.75]


def test_accepted_runs_are_polled_until_terminal() -> None:
    recorder = Recorder(
        [
            httpx.Response(202, json={"run_id": "apirun_1", "status": "queued"}),
            httpx.Response(200, json={"run_id": "apirun_1", "status": "running"}),
            httpx.Response(200, json=TERMINAL),
        ]
    )
    sleeps: list[float] = []
    outcome = run(client_for(recorder, sleeps))
    assert outcome.status == "succeeded" and len(sleeps) == 2
    assert recorder.requests[-1].url.path == "/api/internal/graphs/echo/runs/apirun_1"
    assert recorder.requests[-1].method == "GET"


def test_real_server_executes_a_key_once(execution_api: RunningApi) -> None:
    client = ExecutionApiClient(base_url=execution_api.url, token=execution_api.token)
    first = client.run(graph_id="echo", body=BODY, idempotency_key="k", dagster_run_id="d1")
    second = client.run(graph_id="echo", body=BODY, idempotency_key="k", dagster_run_id="d2")
    assert first == second and first.status == "succeeded"
    assert first.usage is not None and first.usage.total_tokens > 0
    assert execution_api.store.executions == 1
    other = {**BODY, "input": {"q": "changed"}}
    with pytest.raises(ExecutionApiError) as caught:
        client.run(graph_id="echo", body=other, idempotency_key="k", dagster_run_id="d3")
    assert caught.value.http_status == 409


def test_real_server_flaky_graph_is_retried_to_success(execution_api: RunningApi) -> None:
    sleeps: list[float] = []
    client = ExecutionApiClient(
        base_url=execution_api.url, token=execution_api.token, sleep=sleeps.append
    )
    body = {**BODY, "input": {"failures": 2}}
    outcome = client.run(graph_id="flaky", body=body, idempotency_key="f", dagster_run_id="d")
    assert (outcome.status, outcome.attempts) == ("succeeded", 3)
    assert execution_api.store.executions == 1


def test_real_server_wrong_token_is_refused(execution_api: RunningApi) -> None:
    client = ExecutionApiClient(base_url=execution_api.url, token="wrong")
    with pytest.raises(ExecutionApiError) as caught:
        client.run(graph_id="echo", body=BODY, idempotency_key="k", dagster_run_id="d")
    assert (caught.value.http_status, caught.value.code) == (401, "unauthorized")
