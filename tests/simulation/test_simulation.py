"""The fault simulator on a fixed set of seeds: nothing it checks may break on main.

Drives the real sensor tick, dispatch runs, the Python API and the real execution API
contract through tests/simulation/world.py, on a real SQLite file and, with
GRAPH_RUNS_TEST_POSTGRES_URL set, a real PostgreSQL database. ``make sim SEEDS=N HOURS=H``
runs more; a failure names the command that replays its seed.
"""

import logging
import shutil

import pytest

from tests.simulation.databases import fresh_database
from tests.simulation.simulator import Simulation

SQLITE_SEEDS = range(3)
POSTGRES_SEEDS = range(1)
HOURS = 0.5


def _run(seed: int, url: str, backend: str) -> None:
    logging.getLogger("graph_runs").setLevel(logging.CRITICAL)
    try:
        violations = Simulation(seed, url, hours=HOURS).run()
    finally:
        logging.getLogger("graph_runs").setLevel(logging.NOTSET)
    replay = f"python -m tests.simulation --seed {seed} --hours {HOURS} --backend {backend}"
    assert not violations, "\n".join([*violations[:20], f"replay: {replay}"])


@pytest.mark.parametrize("seed", SQLITE_SEEDS)
def test_a_simulated_half_hour_on_sqlite_breaks_no_invariant(
    seed: int, tmp_path, sqlite_template
) -> None:

    path = tmp_path / "sim.db"
    shutil.copyfile(sqlite_template, path)
    _run(seed, f"sqlite:///{path}", "sqlite")


@pytest.mark.postgres
@pytest.mark.parametrize("seed", POSTGRES_SEEDS)
def test_a_simulated_half_hour_on_postgres_breaks_no_invariant(
    seed: int, postgres_url: str
) -> None:

    with fresh_database("postgres") as url:
        _run(seed, url, "postgres")
