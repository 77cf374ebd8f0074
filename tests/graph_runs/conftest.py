"""The ``cli`` fixture: graph-runs commands run in-process against the test database."""

import json
from typing import Any

import pytest

from graph_runs.cli import main


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("GRAPH_RUNS_DATABASE_URL", database_url)

    def run(*args: str) -> tuple[int, Any, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        data = json.loads(out) if "--json" in args and code == 0 else out
        return code, data, err

    return run
