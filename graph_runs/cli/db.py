"""``graph-runs db``: the schedules database's schema."""

import click

from graph_runs.cli.support import emit, json_option, settings
from graph_runs.store.db import make_engine, upgrade


@click.group()
def db() -> None:
    """The schedules database."""


@db.command("upgrade")
@json_option
def db_upgrade(as_json: bool) -> None:
    """Apply pending migrations to GRAPH_RUNS_DATABASE_URL (or the local SQLite file)."""
    engine = make_engine(settings().database_url())
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    emit(
        as_json,
        {"from_revision": before, "to_revision": after},
        lambda d: f"schema at revision {d['to_revision']} (was {d['from_revision'] or 'empty'})",
    )
