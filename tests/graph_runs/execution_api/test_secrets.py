"""The execution API token never appears in any text graph-runs stores, logs or shows.

A sentinel token goes through the places an error can land: the error a call ends with (and
so the ledger row, the schedule's last error and the run's failure), the retry log, every
repr, and the check when the code location loads; end to end, through a dispatch run and
an ad-hoc run, every table, every Dagster event and every log record. Real HTTP to the local
execution API, or to a small API that quotes the Authorization header back in its errors;
an httpx.MockTransport for a transport error that quotes the request.
"""

import asyncio
import json
import logging
from typing import Any

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from graph_runs.dispatch.ledger import BILLING_ACCOUNT_TAG
from graph_runs.execution_api.client import ExecutionApiClient, ExecutionApiError, RetryPolicy
from graph_runs.execution_api.concurrent_calls import Call, ConcurrentCaller, Result
from graph_runs.execution_api.local.server import ExecutionStore
from graph_runs.jobs import graph_run_adhoc_job
from graph_runs.resources.execution_api import ExecutionApiResource
from graph_runs.settings import SettingsError, check_secrets
from graph_runs.store.tables import metadata, run_ledger, schedules
from tests.conftest import RunningApi, serving
from tests.dagster_helpers import apply_partitions, launch, make_resources, tick
from tests.helpers import at, make_grant, make_schedule

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


def _echoing_api(token: str) -> Any:
    """An execution API that quotes the request's Authorization header back in its errors.

    Graph ``refuse`` is answered 400, any other graph a failed run; both quote the header.
    Only a request bearing ``token`` is answered so; anything else gets 401.
    """

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode()
        if authorization != f"Bearer {token}":
            status, answer = 401, {"error": {"code": "unauthorized", "message": "no"}}
        elif "/graphs/refuse/" in scope["path"]:
            status = 400
            answer = {"error": {"code": "bad_request", "message": f"refused {authorization}"}}
        else:
            status = 200
            answer = {
                "status": "failed",
                "run_id": "run_echo_1",
                "output": {"seen": authorization},
                "error": {"code": "graph_failed", "message": f"your header: {authorization}"},
            }
        body = json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def _everything_stored(engine: sa.Engine) -> str:
    """Every row of every table of the schedules database, as text."""
    with engine.connect() as conn:
        return "\n".join(
            repr(row) for table in metadata.sorted_tables for row in conn.execute(sa.select(table))
        )


def _everything_dagster_kept(instance: dg.DagsterInstance) -> str:
    """Every event of every run (messages, failure descriptions, metadata), as text."""
    return "\n".join(
        repr(event) for run in instance.get_runs() for event in instance.all_logs(run.run_id)
    )


def _fire_a_slot_and_an_adhoc_run(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    api: RunningApi,
    graph_id: str,
) -> None:
    """One scheduled slot that pauses its schedule when it fails, and one ad-hoc run."""
    created = at("2026-11-22T09:59:30Z")
    with engine.begin() as conn:
        grant = make_grant(conn, created)
        make_schedule(
            conn, created, grant, graph_id=graph_id, cron="0 10 * * *", pause_after_failures=1
        )
    resources = make_resources(database_url, api, "2026-11-22T10:00:40Z")
    result = tick(instance, resources, None)
    apply_partitions(instance, result)
    (request,) = result.run_requests or []
    launch(instance, resources, request)
    request_config = {"idempotency_key": "req-1", "graph_id": graph_id, "grant_id": grant.id}
    graph_run_adhoc_job.execute_in_process(
        run_config={"ops": {"check_grant": {"config": request_config}}},
        instance=instance,
        resources=resources,
        tags={BILLING_ACCOUNT_TAG: grant.billing_account},
        raise_on_error=False,
    )


def _assert_failed_and_told_nowhere(
    engine: sa.Engine,
    instance: dg.DagsterInstance,
    caplog: pytest.LogCaptureFixture,
    error_code: str,
    sentinel: str,
) -> None:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(run_ledger)).all()
        schedule = conn.execute(sa.select(schedules)).one()
    # The failures happened and were recorded: the test is not green for want of them.
    assert [(r.status, r.error_code) for r in rows] == [("failed", error_code)] * 2
    assert schedule.enabled is False and schedule.pause_note
    assert sentinel not in _everything_stored(engine)
    assert sentinel not in _everything_dagster_kept(instance)
    assert sentinel not in "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("graph_id", "code"), [("echo", "graph_failed"), ("refuse", "bad_request")]
)
def test_a_token_the_api_echoes_is_stored_logged_and_shown_nowhere(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    caplog: pytest.LogCaptureFixture,
    graph_id: str,
    code: str,
) -> None:
    """The sentinel token reaches the API, which quotes it back in its error and output.

    Through a scheduled slot (the dispatch run, the ledger row, the schedule's last error and
    pause note after one failure, the audit log) and an ad-hoc run (its ops' events).
    """
    with serving(_echoing_api(SENTINEL)) as url, caplog.at_level(logging.DEBUG):
        api = RunningApi(url, SENTINEL, ExecutionStore())
        _fire_a_slot_and_an_adhoc_run(engine, database_url, instance, api, graph_id)
    with engine.connect() as conn:
        messages = conn.execute(sa.select(run_ledger.c.error_message)).scalars().all()
    assert all("[redacted]" in (m or "") for m in messages), messages
    _assert_failed_and_told_nowhere(engine, instance, caplog, code, SENTINEL)


def test_an_unsendable_token_is_stored_logged_and_shown_nowhere(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    caplog: pytest.LogCaptureFixture,
    execution_api: RunningApi,
) -> None:
    """A non-ASCII token, past the load check (resources built by hand): nothing is sent."""
    unsendable = SENTINEL + "\u00e9"
    api = RunningApi(execution_api.url, unsendable, execution_api.store)
    with caplog.at_level(logging.DEBUG):
        _fire_a_slot_and_an_adhoc_run(engine, database_url, instance, api, "echo")
    _assert_failed_and_told_nowhere(engine, instance, caplog, "invalid_token", SENTINEL)
    assert execution_api.store.executions == 0
