"""Benchmarks of the sensor's claim step on SQLite (``make bench``; skipped by ``make test``).

Claim cost must follow the number of due schedules, not the number of schedules: the same
100 due schedules are claimed beside 0 and beside 20,000 schedules that are not due.
"""

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.scheduling.claim import claim_due_slots
from graph_runs.store.db import make_engine
from graph_runs.store.tables import run_ledger
from tests.benchmarks.harness import insert_schedules, reset_due
from tests.helpers import at

NOW = at("2026-11-22T10:01:05Z")
DUE_AT = at("2026-11-22T10:01:00Z")


def populate(path: Path, template: Path, due: int, idle: int) -> sa.Engine:
    shutil.copyfile(template, path)
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        insert_schedules(
            conn, total=due + idle, due=due, due_at=DUE_AT, created=at("2026-11-22T10:00:30Z")
        )
    return engine


@pytest.mark.parametrize("idle", [0, 20_000])
def test_claim_100_due(benchmark, tmp_path: Path, sqlite_template: Path, idle: int) -> None:
    engine = populate(tmp_path / "bench.db", sqlite_template, 100, idle)

    def reset() -> None:
        reset_due(engine, DUE_AT)

    fired: list[int] = []

    def claim() -> None:
        with engine.begin() as conn:
            fired.append(claim_due_slots(conn, now=NOW, schedule_limits=ScheduleLimits()).fired)

    benchmark.pedantic(claim, setup=reset, rounds=15)
    # Every round did the whole claim, not a no-op on rows an earlier round claimed.
    assert fired == [100] * 15
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(run_ledger)).scalar() == 100
    engine.dispose()
