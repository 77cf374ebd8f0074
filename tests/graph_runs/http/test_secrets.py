"""The execution API token never appears in any text graph-runs stores, logs or shows.

A sentinel token goes through the places an error can land: the error a call ends with (and
so the ledger row, the schedule's last error and the run's failure), the retry log, every
repr, and the check when the code location loads. Real HTTP to the local execution API for
a token that only needs stripping; an httpx.MockTransport for a transport error that quotes
the request.
"""

import asyncio
import logging

import httpx
import pytest

from graph_runs.http.concurrent_calls import Call, ConcurrentCaller, Result
from graph_runs.http.execution_client import ExecutionApiClient, ExecutionApiError, RetryPolicy
from graph_runs.settings import SettingsError, check_secrets
from resources.execution_api import ExecutionApiResource
from tests.conftest import RunningApi

SENTINEL = "SENTINEL-7f3a"
BODY = {"grant_id": "grt_1", "input": {}, "trigger": {"kind": "scheduled"}}


async def _no_wait(_seconds: float) -> None:
    return None


def call_once(caller: ConcurrentCaller) -> Result:
    async def one() -> Result:
        async with caller.session(dagster_run_id="d1") as session:
            return await session.call(Call("sched:sch_1:x", "echo", BODY, "acct"))

    return asyncio.run(one())


def test_a_token_with_a_trailing_newline_is_stripped_and_works(execution_api: RunningApi) -> None:
    caller = ConcurrentCaller(execution_api.url, execution_api.token + "\n")
    result = call_once(caller)
    assert result.error is None and result.outcome is not None
    assert result.outcome.status == "succeeded"


@pytest.mark.parametrize("token", [f"{SENTINEL}\ninner", f"{SENTINEL}-é", f"{SENTINEL} x"])
def test_an_unsendable_token_fails_the_call_naming_the_variable_only(
    token: str, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[httpx.Request] = []
    caller = ConcurrentCaller(
        "http://api.test", token, transport=httpx.MockTransport(sent.append), sleep=_no_wait
    )
    with caplog.at_level(logging.DEBUG):
        result = call_once(caller)
    assert result.error is not None and result.error.code == "invalid_token"
    assert "GRAPH_RUNS_EXECUTION_API_TOKEN" in result.error.message
    assert SENTINEL not in result.error.message + repr(result.error.as_outcome())
    assert SENTINEL not in caplog.text and sent == []
    with pytest.raises(ExecutionApiError) as caught:
        ExecutionApiClient("http://api.test", token).run(
            graph_id="echo", body=BODY, idempotency_key="k", dagster_run_id="d1"
        )
    assert caught.value.code == "invalid_token" and SENTINEL not in str(caught.value)


def test_a_transport_error_that_quotes_the_request_is_kept_by_type_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError(f"Illegal header value b'Bearer {SENTINEL}'")

    caller = ConcurrentCaller(
        "http://api.test",
        SENTINEL,
        retry=RetryPolicy(max_attempts=2),
        transport=httpx.MockTransport(refuse),
        sleep=_no_wait,
    )
    with caplog.at_level(logging.DEBUG):
        result = call_once(caller)
    assert result.error is not None and result.error.code == "api_unavailable"
    assert "LocalProtocolError" in result.error.message
    assert SENTINEL not in result.error.message and SENTINEL not in caplog.text


def test_no_repr_shows_the_token() -> None:
    resource = ExecutionApiResource(base_url="http://api.test", token=SENTINEL)
    shown = [
        repr(resource),
        str(resource),
        repr(resource.client()),
        repr(resource.concurrent_caller(10, 5)),
    ]
    assert not [text for text in shown if SENTINEL in text]


def test_the_code_location_refuses_an_unsendable_token_by_name() -> None:
    check_secrets({"GRAPH_RUNS_EXECUTION_API_TOKEN": f"{SENTINEL}\n"})  # stripped: fine
    with pytest.raises(SettingsError, match="GRAPH_RUNS_EXECUTION_API_TOKEN") as caught:
        check_secrets({"GRAPH_RUNS_EXECUTION_API_TOKEN": f"{SENTINEL}\u00e9"})
    assert SENTINEL not in str(caught.value)
