"""End to end: the Catalog of a real dagster-webserver shows each schedule's latest outcome.

A real dagster-daemon fires slots that succeed and fail; the test then asks the webserver
the GraphQL questions the Catalog's asset page asks of ``scheduled_graph_runs``: which
partitions (schedules) exist, which have materialized, and each partition's events. A
succeeded slot is a materialization, a failed one an observation on the same partition, so
a schedule's newest event is its latest outcome even after an earlier success, and the
partitioned check last_slot_ok fails on the schedules whose latest slot failed.
"""

import datetime as dt
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.scheduling.schedules import update_schedule
from graph_runs.scheduling.triggers import trigger_schedule
from graph_runs.store.tables import run_ledger
from tests.conftest import RunningApi
from tests.e2e.conftest import Stack, wait_for
from tests.e2e.test_graphql import answering, free_port
from tests.helpers import make_grant, make_schedule

pytestmark = pytest.mark.e2e

CATALOG_QUERY = """
query Catalog($partitions: [String!]) {
  assetNodeOrError(assetKey: {path: ["scheduled_graph_runs"]}) {
    ... on AssetNode {
      partitionKeys
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses { materializedPartitions }
      }
      assetMaterializations(partitions: $partitions) { ...Event }
      assetObservations(partitions: $partitions) { ...Event }
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            partitionStatuses {
              ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
}
fragment Event on MessageEvent {
  runId
  timestamp
  ... on MaterializationEvent { partition metadataEntries { ...Entry } }
  ... on ObservationEvent { partition metadataEntries { ...Entry } }
}
fragment Entry on MetadataEntry {
  label
  ... on TextMetadataEntry { text }
  ... on IntMetadataEntry { intValue }
}
"""

OWNER_RUNS_QUERY = """
query OwnerRuns($owner: String!) {
  runsOrError(filter: {tags: [{key: "graph_runs/owner", value: $owner}]}) {
    ... on Runs { results { runId status } }
  }
}
"""


def entries(event: dict[str, Any]) -> dict[str, Any]:
    return {
        e["label"]: e.get("text", e.get("intValue")) for e in event["metadataEntries"] if len(e) > 1
    }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_catalog_shows_each_schedules_latest_outcome(
    stack: Stack, engine: sa.Engine, execution_api: RunningApi
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with engine.begin() as conn:
        grant = make_grant(conn, now - dt.timedelta(minutes=5))
        good = make_schedule(conn, now, grant, cron=None, run_at=now)
        bad = make_schedule(conn, now, grant, cron=None, run_at=now, graph_id="fail")
        turned = make_schedule(conn, now, grant, cron=None, run_at=now)
    port = free_port()
    stack.start("dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port))
    stack.start("dagster-daemon", "run", "-w", "workspace.yaml")

    def settled(count: int) -> bool:
        with engine.connect() as conn:
            statuses = list(conn.execute(sa.select(run_ledger.c.status)).scalars())
        return len(statuses) == count and set(statuses) <= {"succeeded", "failed"}

    wait_for(lambda: settled(3), stack, "the three slots to settle")
    # `turned` succeeded once; its graph now fails, and a trigger-now fires it again.
    with engine.begin() as conn:
        later = dt.datetime.now(dt.UTC)
        update_schedule(
            conn, turned["id"], {"graph_id": "fail"}, limits=ScheduleLimits(), now=later
        )
        trigger_schedule(conn, turned["id"], now=later, requested_by="ana")
    wait_for(lambda: settled(4), stack, "the triggered slot to settle")
    with engine.connect() as conn:
        ledger = {r.id: r for r in conn.execute(sa.select(run_ledger))}

    wait_for(lambda: answering(f"http://127.0.0.1:{port}/server_info"), stack, "the webserver")
    ids = [good["id"], bad["id"], turned["id"]]

    def catalog() -> dict[str, Any]:
        return httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": CATALOG_QUERY, "variables": {"partitions": ids}},
            timeout=30,
        ).json()

    def announced() -> bool:
        node = catalog().get("data", {}).get("assetNodeOrError") or {}
        return len(node.get("assetMaterializations", []) + node.get("assetObservations", [])) >= 4

    # The slot events sensor announces outcomes on its tick after they were recorded.
    wait_for(announced, stack, "the four outcomes to be announced")
    answer = catalog()
    assert "errors" not in answer, answer
    node = answer["data"]["assetNodeOrError"]
    assert set(ids) <= set(node["partitionKeys"])
    # The partition bar: green for a schedule that has ever succeeded.
    materialized = node["assetPartitionStatuses"]["materializedPartitions"]
    assert sorted(materialized) == sorted([good["id"], turned["id"]])
    events = node["assetMaterializations"] + node["assetObservations"]
    assert len(events) == 4  # one per fired slot, whichever run fired it

    def latest(schedule_id: str) -> dict[str, Any]:
        mine = [e for e in events if e["partition"] == schedule_id]
        return entries(max(mine, key=lambda e: int(e["timestamp"])))

    for schedule_id, status, error in (
        (good["id"], "succeeded", ""),
        (bad["id"], "failed", "graph_failed"),
        (turned["id"], "failed", "graph_failed"),
    ):
        shown = latest(schedule_id)
        row = ledger[shown["ledger_id"]]
        assert (shown["status"], shown["error"]) == (status, error), schedule_id
        assert (row.schedule_id, row.status, row.api_run_id) == (
            schedule_id,
            status,
            shown["api_run_id"],
        )
    assert latest(turned["id"])["slot"] == "manual"

    def failing() -> list[str]:
        # What the Checks tab reads: last_slot_ok's status on each partition, judged by the
        # last_slot_checks run the sensor asked for.
        node = catalog().get("data", {}).get("assetNodeOrError") or {}
        checks = (node.get("assetChecksOrError") or {}).get("checks", [])
        (check,) = [c for c in checks if c["name"] == "last_slot_ok"] or [{}]
        return sorted((check.get("partitionStatuses") or {}).get("failedPartitions", []))

    wait_for(lambda: len(failing()) == 2, stack, "last_slot_ok to fail on the failed schedules")
    assert failing() == sorted([bad["id"], turned["id"]])

    # The runs that fired the failed slots succeeded: a slot's failure is its outcome. Every
    # schedule here is Alice's, so the Runs page's tag filter finds each run by her.
    runs = httpx.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": OWNER_RUNS_QUERY, "variables": {"owner": "alice"}},
        timeout=30,
    ).json()["data"]["runsOrError"]["results"]
    by_id = {run["runId"]: run["status"] for run in runs}
    fired = {row.dagster_run_id for row in ledger.values()}
    assert fired <= by_id.keys(), (fired, by_id)
    assert {by_id[run_id] for run_id in fired} == {"SUCCESS"}
