"""Fixtures of the dispatch benchmarks: the e2e tier's real processes, a recording API.

Also prints, after pytest-benchmark's timings, the figures each benchmark kept.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.benchmarks.harness import OUT, TABLES, RecordingApi, recording_api
from tests.e2e.conftest import dagster_storage_url, stack  # noqa: F401 - fixtures used here


@pytest.fixture
def execution_api(tmp_path: Path) -> Iterator[RecordingApi]:
    """The local execution API, logging each submission's arrival (the stack's API too)."""
    with recording_api(tmp_path) as api:
        yield api


# Each benchmark bounds its own waits (BENCH_DEADLINE_SECONDS for the burst, its last
# instant and 3 minutes for the steady state); the suite's 2-minute hang guard is for
# tests, and cut the 5-minute steady state short.
BENCH_TIMEOUT_SECONDS = 1800


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The benchmarks' hang guard: longer than any of their own bounded waits."""
    for item in items:
        if "benchmarks" in item.path.parts and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(BENCH_TIMEOUT_SECONDS))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The benchmarks' own figures, as markdown tables ready for docs/benchmarks.md."""
    if TABLES:
        terminalreporter.section("graph-runs benchmark figures")
        terminalreporter.write_line("\n\n".join(TABLES))
        terminalreporter.write_line(f"\nJSON and plots: {OUT}")
