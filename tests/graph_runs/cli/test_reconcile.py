"""graph_runs.cli.reconcile: ``graph-runs reconcile`` exits 1 on drift and 0 once repaired.

Runs main() in-process against a real database named by GRAPH_RUNS_DATABASE_URL, without
DAGSTER_HOME: the database's side alone, as the command says.
"""

import datetime as dt

import pytest
import sqlalchemy as sa

from graph_runs.store.db import make_engine
from graph_runs.store.tables import schedules
from tests.helpers import make_grant, make_schedule


def test_the_command_exits_1_on_drift_and_0_once_repaired(
    cli, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    code, report, _ = cli("reconcile", "--json")
    assert code == 0 and report["findings"] == [] and report["compared"] == "database only"
    engine = make_engine(database_url)
    # Created moments ago: its first slot, the repair's next run, is not yet behind.
    created = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    with engine.begin() as conn:
        schedule_id = make_schedule(conn, created, make_grant(conn, created), cron="0 13 * * *")[
            "id"
        ]
        conn.execute(schedules.update().values(next_run_at=None))
    code, text, _ = cli("reconcile")
    assert code == 1 and "- next_run_missing: 1" in text and schedule_id in text
    code, text, _ = cli("reconcile", "--fix")
    assert code == 0 and "repaired 1" in text
    code, report, _ = cli("reconcile", "--json")
    assert code == 0 and report["findings"] == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(schedules.c.next_run_at)).scalar_one() is not None
    engine.dispose()
