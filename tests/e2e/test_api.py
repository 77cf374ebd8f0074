"""End to end: a schedule made through the management API fires, and the API shows its slot.

The API is `graph-runs api serve` in its own process; a real dagster-daemon fires the slot.
"""

import datetime as dt
import socket

import httpx
import pytest
import sqlalchemy as sa

from graph_runs.access.api_keys import SCOPES, create_api_key
from graph_runs.core.cron import format_utc
from tests.conftest import RunningApi
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import make_grant

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_schedule_created_over_http_fires_and_its_slot_shows_cost_and_run(
    stack: Stack, engine: sa.Engine, execution_api: RunningApi
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with engine.begin() as conn:
        grant = make_grant(conn, now - dt.timedelta(minutes=5))
        _, token = create_api_key(conn, name="app", owner=None, scopes=list(SCOPES), now=now)
    port = _free_port()
    stack.env["GRAPH_RUNS_DAGSTER_UI_URL"] = "http://dagster.example"
    stack.start("graph-runs", "api", "serve", "--port", str(port))
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
    )

    def up() -> bool:
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, stack, "the API server", timeout=60)
    created = client.post(
        "/v1/schedules",
        json={
            "owner": "alice",
            "graph_id": "echo",
            "input": {"message": "over http"},
            "run_at": format_utc(now),
            "grant_id": grant.id,
        },
        headers={"Idempotency-Key": "e2e-create"},
    )
    assert created.status_code == 201, created.text
    slots_path = f"/v1/schedules/{created.json()['id']}/slots"
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")

    def succeeded() -> bool:
        items = client.get(slots_path).json()["items"]
        return bool(items) and items[0]["status"] in ("succeeded", "failed")

    wait_for(succeeded, stack, "the slot to finish")
    (slot,) = client.get(slots_path).json()["items"]
    assert slot["status"] == "succeeded", slot
    assert slot["slot"] == format_utc(now) and slot["trigger_kind"] == "scheduled"
    assert slot["cost_usd"] is not None and slot["tokens"] is not None
    assert slot["dagster_run_id"]
    assert slot["dagster_run_url"] == f"http://dagster.example/runs/{slot['dagster_run_id']}"
    assert slot["api_run_id"]
    assert execution_api.store.executions == 1
    schedule = client.get(f"/v1/schedules/{created.json()['id']}").json()
    assert (schedule["status"], schedule["runs_succeeded"]) == ("completed", 1)
    client.close()
