"""graph_runs.execution_api.local.server: the local execution API answers as the contract says.

Real HTTP to the server on a loopback port; its clock is moved by hand for the sleep graph.
"""

import io
import json

import httpx

from tests.conftest import RunningApi

BODY = {"grant_id": "g", "input": {"seconds": 30}, "trigger": {"kind": "api"}}


def post(api: RunningApi, graph: str, body: dict, key: str | None = "k1", token: str | None = None):
    headers = {"Authorization": f"Bearer {token or api.token}"}
    if key:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{api.url}/api/internal/graphs/{graph}/runs", json=body, headers=headers)


def test_sleep_graph_is_accepted_then_terminal_when_its_time_has_passed(
    execution_api: RunningApi,
) -> None:
    accepted = post(execution_api, "sleep", BODY)
    assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
    run_id = accepted.json()["run_id"]
    url = f"{execution_api.url}/api/internal/graphs/sleep/runs/{run_id}"
    auth = {"Authorization": f"Bearer {execution_api.token}"}
    assert httpx.get(url, headers=auth).status_code == 202
    execution_api.store.clock.now += 31  # type: ignore[attr-defined]
    done = httpx.get(url, headers=auth)
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    assert done.json()["usage"]["total_tokens"] > 0


def test_fail_graph_reports_a_failed_terminal_outcome(execution_api: RunningApi) -> None:
    answer = post(execution_api, "fail", {**BODY, "input": {"message": "boom"}})
    assert answer.status_code == 200
    assert answer.json()["error"] == {"code": "graph_failed", "message": "boom"}


def test_refusals(execution_api: RunningApi) -> None:
    assert post(execution_api, "echo", BODY, token="nope").status_code == 401
    assert post(execution_api, "echo", BODY, key=None).status_code == 400
    assert post(execution_api, "nope", BODY).status_code == 404
    assert post(execution_api, "echo", {"input": 1}).status_code == 422
    assert execution_api.store.executions == 0


def test_the_request_log_records_each_arrival_and_each_execution(
    execution_api: RunningApi,
) -> None:
    log = io.StringIO()
    execution_api.store.request_log = log
    first = post(execution_api, "echo", BODY, key="logged")
    again = post(execution_api, "echo", BODY, key="logged")
    assert first.json() == again.json()
    entries = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [sorted(e) for e in entries] == [["arrived", "key"], ["executed"], ["arrived", "key"]]
    assert [e.get("key", e.get("executed")) for e in entries] == ["logged"] * 3
    assert entries[0]["arrived"] <= entries[2]["arrived"]
