"""The app as ``graph-runs api serve`` runs it: made from the environment, in each worker.

uvicorn imports ``app_from_environment`` in every worker process it starts, so that each
has its own engines: a database connection must not cross a fork.
"""

import datetime as dt

from fastapi import FastAPI

from graph_runs.api.app import create_app
from graph_runs.settings import load_settings
from graph_runs.store.db import check_schema, make_engine

# Connections of the writing engine per worker: the server's threads wait on no pool.
WRITE_POOL_SIZE = 20


def wall_clock() -> dt.datetime:
    """The wall clock to the microsecond: two edits within one second must differ."""
    return dt.datetime.now(dt.UTC)


def app_from_environment() -> FastAPI:
    """The management API on the configured database, whose schema must be at head."""
    settings = load_settings()
    engine = make_engine(settings.database_url(), pool_size=WRITE_POOL_SIZE)
    check_schema(engine)
    return create_app(
        engine,
        clock=wall_clock,
        limits=settings.schedule_limits,
        dagster_ui_url=settings.dagster_ui_url,
        dispose_engine=True,
    )
