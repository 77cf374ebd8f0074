"""Fresh, migrated schedules databases for the simulator, removed afterwards."""

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from graph_runs.store.db import make_engine, upgrade

POSTGRES_VAR = "GRAPH_RUNS_TEST_POSTGRES_URL"


@contextmanager
def fresh_database(backend: str) -> Iterator[str]:
    """A URL of an empty database at the current schema: a SQLite file, or a Postgres one."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{Path(folder) / 'sim.db'}"
            engine = make_engine(url)
            upgrade(engine)
            engine.dispose()
            yield url
        return
    admin_url = os.environ.get(POSTGRES_VAR)
    if not admin_url:
        raise SystemExit(f"{POSTGRES_VAR} must name a PostgreSQL server for --backend postgres")
    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    name = f"graph_runs_sim_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(make_engine(admin_url).url).set(database=name)
    rendered = url.render_as_string(hide_password=False)
    try:
        engine = make_engine(rendered)
        upgrade(engine)
        engine.dispose()
        yield rendered
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
