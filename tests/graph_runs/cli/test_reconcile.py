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
    assert code == 0 and report["findings"] == []
    assert report["compared"] == "database only (DAGSTER_HOME is not set)"
    assert report["dagster_home"] is None
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
    code, text, _ = cli("reconcile", "--fix", "--database-only")
    assert code == 0 and "repaired 1" in text
    code, report, _ = cli("reconcile", "--json")
    assert code == 0 and report["findings"] == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(schedules.c.next_run_at)).scalar_one() is not None
    engine.dispose()


def test_fix_without_an_instance_is_refused_and_repairs_nothing(
    cli, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    engine = make_engine(database_url)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    with engine.begin() as conn:
        make_schedule(conn, created, make_grant(conn, created), cron="0 13 * * *")
        conn.execute(schedules.update().values(next_run_at=None))
    code, _, err = cli("reconcile", "--fix")
    assert code == 2 and "DAGSTER_HOME" in err and "--database-only" in err
    with engine.connect() as conn:
        assert conn.execute(sa.select(schedules.c.next_run_at)).scalar_one() is None
    engine.dispose()


def test_the_report_names_the_instance_it_compared(
    cli, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    code, report, _ = cli("reconcile", "--json")
    assert code == 0, report
    assert report["dagster_home"] == str(home)
    assert report["compared"] == f"database and the Dagster instance of DAGSTER_HOME={home}"
