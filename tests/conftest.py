"""Shared fixtures: real SQLite files, a real PostgreSQL database, a real execution API.

Postgres tests run when GRAPH_RUNS_TEST_POSTGRES_URL names a server (``.ci/run`` sets it);
each session creates its own database there and drops it at the end. Without the variable
they are skipped, and ``-ra`` prints why.
"""

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import uvicorn

from graph_runs.execution_api.local.server import ExecutionStore, create_app
from graph_runs.store import tables
from graph_runs.store.db import make_engine, upgrade

POSTGRES_VAR = "GRAPH_RUNS_TEST_POSTGRES_URL"
API_TOKEN = "test-token-not-secret"


# The e2e files, longest first (measured with --durations). Under xdist (`make test` runs
# --dist loadfile) a file is one unit of work and units go out in collection order, so the
# long waits on real processes start at once and the short tests fill the gaps around them.
E2E_LONGEST_FIRST = (
    # Mostly a wait for the next minute, little CPU: started first, it overlaps the rest.
    "test_quickstart.py",
    "test_faults.py",
    "test_daemon_recovery.py",
    "test_topology.py",
    "test_daemon.py",
    "test_daemon_approvals.py",
    "test_graphql.py",
    "test_catalog.py",
    "test_clock_jumps.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def weight(item: pytest.Item) -> tuple[int, int]:
        if not item.get_closest_marker("e2e"):
            return (1, 0)
        name = item.path.name
        return (0, E2E_LONGEST_FIRST.index(name) if name in E2E_LONGEST_FIRST else 99)

    items.sort(key=weight)  # stable: within a file, tests keep their order


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied per test so that each starts empty and fast."""
    path = tmp_path_factory.mktemp("template") / "graph_runs.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@contextmanager
def private_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty database on the test server (skipped without one), dropped afterwards."""
    admin_url = os.environ.get(POSTGRES_VAR)
    if not admin_url:
        pytest.skip(f"{POSTGRES_VAR} is not set; PostgreSQL tests skipped")
    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(make_engine(admin_url).url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of this session's own on the test server, dropped afterwards."""
    with private_postgres_database("graph_runs_test") as url:
        yield url


@pytest.fixture(scope="session")
def postgres_migrated(postgres_url: str) -> str:
    engine = make_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    return postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty schedules database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "graph_runs.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_migrated")
    engine = make_engine(url)
    with engine.begin() as conn:
        # DELETE, not TRUNCATE: on tables this small it costs 3 ms instead of 36 (TRUNCATE
        # makes new files for every table and index), and the suite does it 300 times.
        for table in reversed(tables.metadata.sorted_tables):
            conn.execute(table.delete())
        conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('audit_log', 'id'), 1, false)")
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on ``database_url``; at teardown no pooled connection may still be out."""
    eng = make_engine(database_url)
    yield eng
    checked_out = eng.pool.checkedout()  # type: ignore[attr-defined]
    eng.dispose()
    assert checked_out == 0, f"{checked_out} database connection(s) leaked"


@pytest.fixture(scope="session")
def dagster_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dagster's SQLite storage, made once: making it costs 0.4 s of CPU, copying it 0.05 s."""
    path = tmp_path_factory.mktemp("dagster_template")
    with dg.instance_for_test(temp_dir=str(path)):
        pass
    return path


@pytest.fixture
def instance(tmp_path: Path, dagster_template: Path) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance of the test's own, on real SQLite files (a copy of the template)."""
    home = tmp_path / "dagster_home"
    shutil.copytree(dagster_template, home)
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@dataclass
class RunningApi:
    url: str
    token: str
    store: ExecutionStore


class FakeClock:
    """A monotonic clock the test moves by hand (the server's ``sleep`` graph reads it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app over real HTTP on a free loopback port, in a thread; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # readiness of a thread, not a wait on behaviour under test
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def execution_api() -> Iterator[RunningApi]:
    """The local execution API on a free loopback port, serving real HTTP in a thread."""
    store = ExecutionStore(clock=FakeClock())
    with serving(create_app(API_TOKEN, store)) as url:
        yield RunningApi(url, API_TOKEN, store)
