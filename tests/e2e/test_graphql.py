"""End to end: immediate runs through Dagster's GraphQL API with the caller's idempotency key.

A real dagster-webserver takes DagsterGraphQLClient.submit_job_execution; a real
dagster-daemon dequeues the runs; the same request twice executes once, with one ledger row
and one receipt.
"""

import socket

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from dagster_graphql import DagsterGraphQLClient

from graph_runs.store.tables import charge_receipts, run_ledger
from tests.conftest import RunningApi
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import at, make_grant

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answering(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_same_request_twice_executes_once(
    stack: Stack,
    engine: sa.Engine,
    execution_api: RunningApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, at("2026-01-01T00:00:00Z"))
    port = free_port()
    stack.start("dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port))
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")
    wait_for(lambda: answering(f"http://127.0.0.1:{port}/server_info"), stack, "the webserver")
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_config = {
        "ops": {
            "check_grant": {
                "config": {
                    "idempotency_key": "order-1234",
                    "graph_id": "echo",
                    "grant_id": grant.id,
                    "input": {"question": "status?"},
                    "requested_by": "support-bot",
                }
            }
        }
    }
    run_ids = [
        client.submit_job_execution("graph_run_adhoc_job", run_config=run_config) for _ in range(2)
    ]
    with stack.instance(monkeypatch) as instance:

        def both_finished() -> bool:
            runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
            return all(run is not None and run.is_finished for run in runs)

        wait_for(both_finished, stack, "both runs to finish")
        statuses = [instance.get_run_by_id(r).status for r in run_ids]  # type: ignore[union-attr]
        tags = instance.get_run_by_id(run_ids[0]).tags  # type: ignore[union-attr]
    assert statuses == [dg.DagsterRunStatus.SUCCESS] * 2
    assert execution_api.store.executions == 1
    with engine.connect() as conn:
        row = conn.execute(sa.select(run_ledger)).one()
        receipt = conn.execute(sa.select(charge_receipts)).one()
    assert (row.idempotency_key, row.status, row.trigger_kind) == (
        "api:order-1234",
        "succeeded",
        "api",
    )
    assert receipt.graph_run_id == row.id
    assert tags["graph_runs/ledger_id"] == row.id
    assert tags["graph_runs/billing_account"] == "alice-billing"
