"""graph_runs.cli: the assembled command line, its exit statuses, and the installed script.

Runs main() in-process against a fresh SQLite file, plus one run of the installed
`graph-runs` script. Bad input must give one line on stderr and exit status 2.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graph_runs.cli import main
from graph_runs.store.db import head_revision


def test_unmigrated_database_says_which_command_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRAPH_RUNS_DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert main(["schedules", "list"]) == 2
    assert capsys.readouterr().err == (
        "error: the schedules database has no schema yet: run `graph-runs db upgrade`\n"
    )
    assert main(["db", "upgrade", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "from_revision": None,
        "to_revision": head_revision(),
    }


def test_installed_script_exits_2(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "graph-runs"
    result = subprocess.run(
        [str(script), "schedules", "preview", "--cron", "* * *", "--from", "2026-01-01T00:00:00Z"],
        capture_output=True,
        text=True,
        env={"GRAPH_RUNS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == "error: cron: '* * *' is not a 5-field cron expression (minute hour day month weekday)\n"
    )
