"""End to end: the production topology, as separate processes, on Postgres.

Dagster's storage and the schedules live in PostgreSQL (``dagster.postgres.yaml``); the
definitions are served by a gRPC code server (``dagster code-server start``), which
``dagster-webserver`` and ``dagster-daemon``, each its own process, load through a
``workspace.yaml`` that points at it; the execution API is the real local one. Three slots
come due some seconds apart; the code server is restarted after the first has fired, the
daemon after the second. Every slot fires once, shows through the webserver's GraphQL, and
the API executed each once.
"""

import datetime as dt
import subprocess
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from graph_runs.store.tables import run_ledger
from tests.conftest import RunningApi
from tests.e2e.conftest import Stack, assert_exactly_once, ledger, wait_for
from tests.e2e.test_graphql import answering, free_port
from tests.helpers import make_grant, make_schedule

pytestmark = pytest.mark.e2e

RUNS_QUERY = """
query Runs($ledgerTag: String!) {
  runsOrError(filter: {tags: [{key: "graph_runs/batch_id", value: $ledgerTag}]}) {
    ... on Runs { results { runId status jobName } }
  }
}
"""


def restart(stack: Stack, process: subprocess.Popen[bytes], *argv: str) -> None:
    """Stop a process this test started (SIGTERM, its whole group), then start it again."""
    stack.stop(process)
    stack.start(*argv)


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_the_production_topology_survives_restarts_and_fires_each_slot_once(
    stack: Stack,
    engine: sa.Engine,
    execution_api: RunningApi,
    dagster_storage_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grpc_port, web_port = free_port(), free_port()
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - grpc_server:\n"
        "      host: 127.0.0.1\n"
        f"      port: {grpc_port}\n"
        "      location_name: graph_runs\n"
    )
    # Claimed two seconds ahead, not twenty: each slot falls between two restarts.
    stack.env["GRAPH_RUNS_LAUNCH_ALLOWANCE_SECONDS"] = "1"
    stack.env["GRAPH_RUNS_DISPATCH_LEASE_SECONDS"] = "10"
    code_server = (
        "dagster", "code-server", "start", "-h", "127.0.0.1", "-p", str(grpc_port),
        "-m", "graph_runs.definitions", "-a", "defs", "--location-name", "graph_runs",
    )  # fmt: skip
    daemon = ("dagster-daemon", "run", "-w", str(workspace))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    dues = [now + dt.timedelta(seconds=s) for s in (25, 50, 75)]
    with engine.begin() as conn:
        grant = make_grant(conn, now - dt.timedelta(minutes=5))
        ids = [make_schedule(conn, now, grant, cron=None, run_at=due)["id"] for due in dues]
    stack.start(*code_server)
    stack.start("dagster-webserver", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(web_port))
    stack.start(*daemon)

    def fired(count: int) -> bool:
        with engine.connect() as conn:
            statuses = list(conn.execute(sa.select(run_ledger.c.status)).scalars())
        return statuses.count("succeeded") >= count

    def runs_ended(instance: dg.DagsterInstance) -> bool:
        """Every slot fired so far has its Dagster run ended (it records, then ends)."""
        with engine.connect() as conn:
            run_ids = conn.execute(
                sa.select(run_ledger.c.dagster_run_id).where(run_ledger.c.status == "succeeded")
            ).scalars()
            runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
        return all(run is not None and run.is_finished for run in runs)

    with stack.instance(monkeypatch) as instance:
        wait_for(lambda: fired(1), stack, "the first slot")
        # Between slots: the first slot's run has ended (the default launcher runs it under
        # the code server, whose restart would end it too).
        wait_for(lambda: runs_ended(instance), stack, "the first slot's run to end")
        restart(stack, stack.processes[0], *code_server)
        wait_for(lambda: fired(2), stack, "the second slot, after the code server's restart")
        wait_for(lambda: runs_ended(instance), stack, "the second slot's run to end")
        daemon_process = next(p for p in stack.processes if "dagster-daemon" in str(p.args))
        restart(stack, daemon_process, *daemon)
        wait_for(lambda: fired(3), stack, "the third slot, after the daemon's restart")
        wait_for(lambda: runs_ended(instance), stack, "the third slot's run to end")

    assert_exactly_once(engine, execution_api.store, ids)
    rows = ledger(engine)
    # Each slot's dispatch run, through the webserver's GraphQL, as the UI shows it.
    wait_for(lambda: answering(f"http://127.0.0.1:{web_port}/server_info"), stack, "webserver")
    for row in rows:
        answer = httpx.post(
            f"http://127.0.0.1:{web_port}/graphql",
            json={"query": RUNS_QUERY, "variables": {"ledgerTag": row.batch_id}},
            timeout=30,
        ).json()
        assert "errors" not in answer, answer
        runs = answer["data"]["runsOrError"]["results"]
        assert [r["runId"] for r in runs if r["status"] == "SUCCESS"] == [row.dagster_run_id]
