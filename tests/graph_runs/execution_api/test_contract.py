"""graph_runs.execution_api.contract: the API's answers are checked before anything reads them.

An httpx.MockTransport plays an API off the contract. Every malformed answer ends its call
as one failed outcome with the code ``invalid_response`` and an escaped excerpt, through
both the dispatch run's concurrent caller and the single-run client; stored error texts are
bounded and one line; path segments are escaped. A real ledger row records the result.
"""

import asyncio
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.core.text import MAX_ERROR_CODE, MAX_ERROR_MESSAGE
from graph_runs.dispatch.ledger import record_outcome
from graph_runs.execution_api.client import ExecutionApiClient, ExecutionApiError, RetryPolicy
from graph_runs.execution_api.concurrent_calls import Call, ConcurrentCaller, Result
from graph_runs.scheduling.claim import claim_due_slots
from graph_runs.store.tables import charge_receipts, run_ledger
from tests.helpers import at, make_grant, make_schedule

BODY = {"grant_id": "grt_1", "input": {}, "trigger": {"kind": "scheduled"}}
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "cost_usd": "0.01"}
GOOD = {"run_id": "apirun_1", "status": "succeeded", "output": {}, "usage": USAGE}

MALFORMED: dict[str, tuple[int, Any]] = {
    "error as a string": (200, {"error": "nope"}),
    "not JSON": (200, "<html>oops</html>"),
    "a JSON list": (200, [1, 2]),
    "202 without run_id": (202, {"status": "queued"}),
    "202 with a path for a run_id": (202, {"run_id": "../../admin/tokens"}),
    "200 without status": (200, {"run_id": "apirun_1"}),
    "200 still running": (200, {**GOOD, "status": "running"}),
    "usage as a list": (200, {**GOOD, "usage": [1]}),
    "tokens as strings": (200, {**GOOD, "usage": {**USAGE, "total_tokens": "5"}}),
    "tokens of 2**70": (200, {**GOOD, "usage": {**USAGE, "prompt_tokens": 2**70}}),
    "cost NaN": (200, {**GOOD, "usage": {**USAGE, "cost_usd": "NaN"}}),
    "cost 1e20": (200, {**GOOD, "usage": {**USAGE, "cost_usd": "1e20"}}),
    "negative cost": (200, {**GOOD, "usage": {**USAGE, "cost_usd": "-1000"}}),
    "cost as a boolean": (200, {**GOOD, "usage": {**USAGE, "cost_usd": True}}),
}


def answer(status: int, body: Any) -> httpx.Response:
    if isinstance(body, str):
        return httpx.Response(status, text=body)
    return httpx.Response(status, json=body)


class Script:
    """Answers in order; records what was asked."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers.pop(0)


async def _no_wait(_seconds: float) -> None:
    return None


def call_once(script: Script, graph_id: str = "echo") -> Result:
    caller = ConcurrentCaller(
        "http://api.test",
        "token",
        retry=RetryPolicy(max_attempts=2),
        transport=httpx.MockTransport(script),
        sleep=_no_wait,
    )

    async def one() -> Result:
        async with caller.session(dagster_run_id="d1") as session:
            return await session.call(Call("sched:sch_1:x", graph_id, BODY, "acct"))

    return asyncio.run(one())


def run_once(script: Script) -> Any:
    client = ExecutionApiClient(
        "http://api.test",
        "token",
        retry=RetryPolicy(max_attempts=2),
        transport=httpx.MockTransport(script),
        sleep=lambda _s: None,
    )
    return client.run(graph_id="echo", body=BODY, idempotency_key="k", dagster_run_id="d1")


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_an_answer_off_the_contract_ends_the_call_as_invalid_response(case: str) -> None:
    status, body = MALFORMED[case]
    result = call_once(Script(answer(status, body)))
    assert result.outcome is None and result.error is not None
    assert result.error.code == "invalid_response"
    # Not "still running, poll again": the API will not answer differently.
    assert result.error.api_run_id is None
    assert "\n" not in result.error.message and len(result.error.message) <= MAX_ERROR_MESSAGE
    with pytest.raises(ExecutionApiError) as caught:
        run_once(Script(answer(status, body)))
    assert caught.value.code == "invalid_response"


def test_a_crafted_run_id_is_never_polled() -> None:
    script = Script(answer(202, {"run_id": "../../admin/tokens"}))
    assert call_once(script).error is not None
    assert [r.method for r in script.requests] == ["POST"]


def test_a_bad_poll_answer_is_polled_again_and_a_bad_terminal_one_names_its_run() -> None:
    accepted = answer(202, {"run_id": "apirun_7", "status": "queued"})
    script = Script(accepted, answer(200, "garbage"), answer(200, GOOD))
    result = call_once(script)
    assert result.outcome is not None and result.outcome.status == "succeeded"
    assert [r.url.path for r in script.requests[1:]] == [
        "/api/internal/graphs/echo/runs/apirun_7"
    ] * 2

    nan = {**GOOD, "run_id": "apirun_7", "usage": {**USAGE, "cost_usd": "NaN"}}
    result = call_once(Script(accepted, answer(200, nan)))
    assert result.error is not None and result.error.code == "invalid_response"
    assert result.error.message.startswith("run apirun_7: ")


def test_error_texts_are_bounded_and_one_line() -> None:
    huge = "x" * 2_800_000
    refusal = {"error": {"code": "c" * 5000, "message": "bad\nlast error: none\x1b[2J" + huge}}
    result = call_once(Script(answer(422, refusal)))
    assert result.error is not None
    assert len(result.error.code) <= MAX_ERROR_CODE and len(result.error.message) <= 2000
    assert result.error.message.startswith("bad\\nlast error: none\\x1b[2J")
    failed = {"run_id": "apirun_1", "status": "failed", "error": {"code": "E", "message": huge}}
    outcome = call_once(Script(answer(200, failed))).outcome
    assert outcome is not None and len(outcome.error_message or "") == MAX_ERROR_MESSAGE


def test_graph_ids_and_run_ids_stay_one_path_segment() -> None:
    script = Script(answer(200, GOOD))
    call_once(script, graph_id="..")
    assert script.requests[0].url.raw_path == b"/api/internal/graphs/%2E%2E/runs"
    script = Script(answer(200, GOOD))
    call_once(script, graph_id="a/../../x")
    assert script.requests[0].url.raw_path == b"/api/internal/graphs/a%2F..%2F..%2Fx/runs"


def test_a_malformed_answer_is_recorded_failed_without_a_receipt(engine: sa.Engine) -> None:
    now = at("2026-11-22T10:00:05Z")
    with engine.begin() as conn:
        make_schedule(conn, now, make_grant(conn, now))
        claim_due_slots(conn, now=at("2026-11-22T10:01:00Z"), schedule_limits=ScheduleLimits())
        row = conn.execute(sa.select(run_ledger)).one()
    status, body = MALFORMED["cost NaN"]
    error = call_once(Script(answer(status, body))).error
    assert error is not None
    with engine.begin() as conn:
        record_outcome(conn, row.id, error.as_outcome(), dagster_run_id="d1", now=now)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(run_ledger).where(run_ledger.c.id == row.id)).one()
        receipts = conn.execute(sa.select(sa.func.count()).select_from(charge_receipts)).scalar()
    assert (stored.status, stored.error_code, receipts) == ("failed", "invalid_response", 0)
    assert "\n" not in stored.error_message and "NaN" in stored.error_message
