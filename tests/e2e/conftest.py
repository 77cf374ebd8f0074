"""Real Dagster processes (dagster-daemon, dagster-webserver) on a temporary DAGSTER_HOME.

The processes read the same environment a deployment would; the execution API is the real
local server in the test process, reached over loopback HTTP by the run workers.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.execution_api.local.server import ExecutionStore
from graph_runs.store.db import make_engine
from graph_runs.store.tables import charge_receipts, run_ledger
from tests.conftest import RunningApi

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Stack:
    env: dict[str, str]
    dagster_home: Path
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *argv: str) -> None:
        log = open(self.logs / f"{Path(argv[0]).name}-{len(self.processes)}.log", "wb")  # noqa: SIM115
        self.processes.append(
            subprocess.Popen(
                [str(BIN / argv[0]), *argv[1:]],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        """Stop a process this test started, by its process group, and forget it.

        The code server a daemon spawns shares the daemon's group and outlives a SIGTERM (its
        heartbeat did not end it either): whatever of the group is left is killed. The group
        is this test's own, made by start_new_session.
        """
        assert process in self.processes, "not a process this test started"
        if process.poll() is None:
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.processes.remove(process)

    def instance(self, monkeypatch: pytest.MonkeyPatch) -> dg.DagsterInstance:
        """The same Dagster instance the processes use, opened in the test process."""
        for name in ("DAGSTER_HOME", "GRAPH_RUNS_DAGSTER_POSTGRES_URL"):
            if name in self.env:
                monkeypatch.setenv(name, self.env[name])
        return dg.DagsterInstance.from_config(str(self.dagster_home))

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.logs.glob("*.log"))


# A hung e2e test fails after this long: above the longest bounded wait in the tier (420 s
# for a batch's second attempt) plus the processes' start, far under CI's 90 minutes.
E2E_TIMEOUT_SECONDS = 600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT_SECONDS))


SLOT_JOBS = ("graph_run_job", "dispatch_batch_job")


def slot_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """The runs that fire slots, without the operations jobs' runs.

    The health checks (every five minutes) and reconcile (hourly) run on Dagster schedules,
    so a test that crosses their minute finds their runs beside its own.
    """
    return [run for run in instance.get_runs() if run.job_name in SLOT_JOBS]


def ledger(engine: sa.Engine) -> list[Any]:
    """Every ledger row."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(run_ledger)))


def assert_exactly_once(engine: sa.Engine, store: ExecutionStore, schedule_ids: list[str]) -> None:
    """One final row per due slot, one execution per slot, one receipt per succeeded slot."""
    rows = ledger(engine)
    with engine.connect() as conn:
        receipts = list(conn.execute(sa.select(charge_receipts)))
    assert sorted(r.schedule_id for r in rows) == sorted(schedule_ids)
    assert {r.status for r in rows} == {"succeeded"}, [(r.status, r.error_message) for r in rows]
    assert store.executions == len(schedule_ids)
    assert len(store.keys) == len(schedule_ids)
    assert len({r.api_run_id for r in rows}) == len(rows)
    assert sorted((r.graph_run_id, r.api_run_id) for r in receipts) == sorted(
        (r.id, r.api_run_id) for r in rows
    )


def wait_for(check: Callable[[], bool], stack: Stack, what: str, timeout: float = 240) -> None:
    """Poll a real process's progress; the deadline only bounds a hung test."""
    deadline = time.monotonic() + timeout
    while not check():
        for process in stack.processes:
            assert process.poll() is None, f"{process.args} exited:\n{stack.output()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{stack.output()}"
        time.sleep(0.5)


@pytest.fixture
def dagster_storage_url(database_url: str) -> Iterator[str | None]:
    """A Postgres database for Dagster's own storage when the schedules DB is Postgres."""
    if not database_url.startswith("postgresql"):
        yield None
        return
    admin = make_engine(os.environ["GRAPH_RUNS_TEST_POSTGRES_URL"]).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    name = f"graph_runs_dagster_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(admin.url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def stack(
    tmp_path: Path,
    database_url: str,
    dagster_storage_url: str | None,
    execution_api: RunningApi,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    """A DAGSTER_HOME with the repository's dagster.yaml (or dagster.postgres.yaml)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance_file = "dagster.postgres.yaml" if dagster_storage_url else "dagster.yaml"
    shutil.copyfile(REPO / instance_file, home / "dagster.yaml")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DAGSTER_HOME": str(home),
        "GRAPH_RUNS_HOME": str(tmp_path / "graph_runs_home"),
        "GRAPH_RUNS_DATABASE_URL": database_url,
        "GRAPH_RUNS_EXECUTION_API_URL": execution_api.url,
        "GRAPH_RUNS_EXECUTION_API_TOKEN": execution_api.token,
        "GRAPH_RUNS_SENSOR_INTERVAL_SECONDS": "1",
    }
    if dagster_storage_url:
        env["GRAPH_RUNS_DAGSTER_POSTGRES_URL"] = dagster_storage_url
    running = Stack(env=env, dagster_home=home, logs=logs)
    # Dagster's storage is created here, once: processes started together on an empty
    # DAGSTER_HOME race to create it ("table alembic_version already exists").
    with running.instance(monkeypatch):
        pass
    yield running
    for process in running.processes:  # all at once, then each waited for
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in list(running.processes):
        running.stop(process)
