"""End to end: immediate runs through Dagster's GraphQL API with the caller's idempotency key.

A real dagster-webserver takes DagsterGraphQLClient.submit_job_execution; a real
dagster-daemon dequeues the runs; the same request twice executes once, with one ledger row
and one receipt. A launch whose run config overrides a resource (where the token goes, what
time it is) is refused by the webserver, and no run exists. A schedule's partition, as the
launchpad reads it and as a backfill launches it, carries the account that pays.
"""

import datetime as dt
import socket
from typing import Any

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from graph_runs.dispatch.ledger import BILLING_ACCOUNT_TAG
from graph_runs.jobs.partitions import SCHEDULE_PARTITIONS_NAME
from graph_runs.store.tables import charge_receipts, run_ledger
from tests.conftest import RunningApi
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import at, make_grant, make_schedule

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
        client.submit_job_execution(
            "graph_run_adhoc_job",
            run_config=run_config,
            tags={"graph_runs/billing_account": grant.billing_account},
        )
        for _ in range(2)
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


# Each would be a theft: the bearer token sent to the caller's server (without them knowing
# its value), or a clock in the past that passes an expired grant and dates receipts
# outside their month.
OVERRIDES: list[tuple[str, dict[str, Any]]] = [
    ("execution_api", {"base_url": "http://127.0.0.1:9", "token": {"env": "HOME"}}),
    ("clock", {"fixed_now": "2020-01-01T00:00:00Z"}),
    ("database", {"url": "sqlite:////tmp/elsewhere.db"}),
]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_launch_that_overrides_a_resource_is_refused_and_makes_no_run(
    stack: Stack, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, at("2026-01-01T00:00:00Z"))
    port = free_port()
    stack.start("dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port))
    wait_for(lambda: answering(f"http://127.0.0.1:{port}/server_info"), stack, "the webserver")
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    op_config = {"idempotency_key": "steal-1", "graph_id": "echo", "grant_id": grant.id}
    for key, config in OVERRIDES:
        run_config = {
            "ops": {"check_grant": {"config": {**op_config, "input": {}}}},
            "resources": {key: {"config": config}},
        }
        with pytest.raises(DagsterGraphQLClientError) as refused:
            client.submit_job_execution("graph_run_adhoc_job", run_config=run_config)
        assert "RunConfigValidationInvalid" in str(refused.value)
        assert f"resources:{key}:config" in str(refused.value.args)  # the webserver names it
    with stack.instance(monkeypatch) as instance:
        assert instance.get_runs_count() == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(run_ledger)).scalar_one() == 0


REPOSITORY = {"repositoryLocationName": "graph_runs", "repositoryName": "__repository__"}
PARTITION_SET = "graph_run_job_partition_set"
PARTITION_TAGS = """
query ($repository: RepositorySelector!, $set: String!, $name: String!) {
  partitionSetOrError(repositorySelector: $repository, partitionSetName: $set) {
    ... on PartitionSet {
      partition(partitionName: $name) {
        tagsOrError { ... on PartitionTags { results { key value } } }
      }
    }
  }
}
"""
LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_partition_launch_from_the_ui_is_submitted_with_the_account_that_pays(
    stack: Stack, engine: sa.Engine, execution_api: RunningApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The queue counts runs per account by tag before any op runs: the UI's two ways to
    # launch a schedule's partition (the launchpad reads these tags; a backfill's runs get
    # them from the daemon) must carry it, and the op refuses a run without it.
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        grant = make_grant(conn, at("2026-01-01T00:00:00Z"))
        schedule_id = make_schedule(conn, now, grant, cron="0 0 1 1 *")["id"]
    with stack.instance(monkeypatch) as instance:
        instance.add_dynamic_partitions(SCHEDULE_PARTITIONS_NAME, [schedule_id])
    port = free_port()
    stack.start("dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port))
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")
    wait_for(lambda: answering(f"http://127.0.0.1:{port}/server_info"), stack, "the webserver")

    def graphql(query: str, variables: dict[str, Any]) -> dict[str, Any]:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": query, "variables": variables},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    asked = {"repository": REPOSITORY, "set": PARTITION_SET, "name": schedule_id}
    partition = graphql(PARTITION_TAGS, asked)
    results = partition["partitionSetOrError"]["partition"]["tagsOrError"]["results"]
    assert {"key": BILLING_ACCOUNT_TAG, "value": "alice-billing"} in results

    selector = {"repositorySelector": REPOSITORY, "partitionSetName": PARTITION_SET}
    params = {"selector": selector, "partitionNames": [schedule_id]}
    launched = graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill = dg.RunsFilter(tags={"dagster/backfill": launched["backfillId"]})
    with stack.instance(monkeypatch) as instance:

        def finished() -> bool:
            runs = instance.get_runs(filters=backfill)
            return len(runs) == 1 and runs[0].is_finished

        wait_for(finished, stack, "the backfill's run to finish")
        (run,) = instance.get_runs(filters=backfill)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags[BILLING_ACCOUNT_TAG] == "alice-billing"
    assert execution_api.store.executions == 1
