"""End to end: the README's five-minute tour, its commands run as written.

``make dev PORT= API_PORT=`` starts the real stack (local execution API, ``dagster dev``
with its webserver and daemon) on free ports, with its state under a temporary
``GRAPH_RUNS_HOME``. The tour's shell blocks are read from README.md and run through bash
from the top of the repo, with only the ids they print (``grt_...``, ``sch_...``) filled in.
The slot the tour promises within a minute must fire and succeed. The test stops the stack
by its own process group.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO
from tests.e2e.faults import free_port

pytestmark = pytest.mark.e2e

# A bound on a hung test, not a speed check: the slot is due within a minute, then a
# sensor tick (10 s in development) and a run's launch.
FIRST_SLOT_TIMEOUT = 240.0


def tour_commands() -> list[str]:
    """The shell commands of the README's tour, continuation lines joined."""
    readme = (REPO / "README.md").read_text()
    tour = readme.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", tour, flags=re.S):
        joined = re.sub(r"\\\n\s*", "", block)
        for line in joined.splitlines():
            command = line.split("    #", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


def run(command: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_until(check, what: str, timeout: float, stack: subprocess.Popen[bytes], log: Path):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert stack.poll() is None, f"make dev exited:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what}:\n{log.read_text()[-4000:]}"
        )
        time.sleep(1)


def test_the_readme_tour_works_as_written(tmp_path: Path) -> None:
    commands = tour_commands()
    assert commands[0].startswith(".venv/bin/graph-runs grants create --owner alice")
    assert any("schedules create" in c and "--graph echo" in c for c in commands)
    port, api_port, management_port = free_port(), free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRAPH_RUNS_") and k not in ("DAGSTER_HOME", "DAGSTER_IS_DEV_CLI")
    }
    env["GRAPH_RUNS_HOME"] = str(tmp_path / "home")
    # The tour's own commands find the local API where `make dev` put it.
    env["GRAPH_RUNS_EXECUTION_API_URL"] = f"http://127.0.0.1:{api_port}"
    log = tmp_path / "make-dev.log"
    with log.open("wb") as out:
        stack = subprocess.Popen(
            [
                "make",
                "dev",
                f"PORT={port}",
                f"API_PORT={api_port}",
                f"MANAGEMENT_PORT={management_port}",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ui = f"http://127.0.0.1:{port}/server_info"

        def answers() -> bool:
            try:
                return httpx.get(ui, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, f"the Dagster UI on {port}", 120, stack, log)
        ids: dict[str, str] = {}
        for command in commands:
            for placeholder in ("grt_...", "sch_..."):
                if placeholder in command:
                    command = command.replace(placeholder, ids[placeholder])
            out = run(command, env)
            if "grants create" in command:
                ids["grt_..."] = json.loads(out)["id"]
            if "schedules create" in command:
                ids["sch_..."] = re.search(r"sch_[0-9a-f]{32}", out).group(0)  # type: ignore[union-attr]
                # The tour's step 3: within a minute its first slot fires. See it.
                wait_until(
                    lambda: _succeeded(ids["sch_..."], env),
                    "the tour schedule's first slot",
                    FIRST_SLOT_TIMEOUT,
                    stack,
                    log,
                )
        described = json.loads(
            run(f".venv/bin/graph-runs schedules describe {ids['sch_...']} --json", env)
        )
        assert described["pause"]["paused"] and described["pause"]["note"] == "enough for today"
        assert "succeeded" in {a["status"] for a in described["recent_actions"]}
        output = log.read_text()
        assert f"Dagster UI on http://127.0.0.1:{port}" in output
        assert f"execution API on http://127.0.0.1:{api_port}" in output
        # The management API is up, with the key make dev made for it.
        key = (tmp_path / "home" / "dev-api-key").read_text().strip()
        listed = httpx.get(
            f"http://127.0.0.1:{management_port}/v1/schedules",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert listed.status_code == 200
        assert ids["sch_..."] in {s["id"] for s in listed.json()["items"]}
        # The start-up warnings that misled (a dagster.yaml in the current folder) are gone.
        assert "Found a dagster instance configuration" not in output
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGINT)
            try:
                stack.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(stack.pid, signal.SIGKILL)
                stack.wait(timeout=10)


def _succeeded(schedule_id: str, env: dict[str, str]) -> bool:
    described = json.loads(
        run(f".venv/bin/graph-runs schedules describe {schedule_id} --json", env)
    )
    return any(a["status"] == "succeeded" for a in described["recent_actions"])
