"""``make screenshots``: the README's pictures of the Dagster UI, taken from a live demo stack.

It starts ``graph-runs dev`` in a fresh home on free ports, adds three owners' schedules
(Alice's and Carol's succeed, Bob's graph fails), fires each once, waits until the UI has
their events and check results and a run of Alice's alone, and has headless Chromium take
each page. Not part of ``make test``: it needs Chromium (Debian's ``chromium``) and takes
about four minutes. It stops only the processes it started, by their process group.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

log = logging.getLogger("screenshots")
REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
BIN = Path(sys.executable).parent
ASSET = "scheduled_graph_runs"
# How long the stack gets to come up, and the slots to be fired, announced and judged.
START_TIMEOUT = 180.0
SETTLE_TIMEOUT = 240.0
# Without the background-networking flags, Chromium dials Google's hosts on a closed network.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}
# How long one page gets to show what it is waited for.
PAGE_TIMEOUT_MS = 60_000

CHECKS_QUERY = """
{
  assetNodeOrError(assetKey: {path: ["ASSET"]}) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            partitionStatuses {
              ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
}
""".replace("ASSET", ASSET)


OWNER_RUNS_QUERY = """
{
  runsOrError(filter: {tags: [{key: "graph_runs/owner", value: "alice"}]}) {
    ... on Runs { results { runId status } }
  }
}
"""


def free_port() -> int:
    """A loopback port free now (the stack binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    """``probe()`` once it is truthy; bounded in time, polled every two seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = probe()
        except (httpx.HTTPError, subprocess.CalledProcessError, KeyError, ValueError):
            found = None
        if found:
            return found
        time.sleep(2)
    raise SystemExit(f"screenshots: gave up after {timeout:.0f} s waiting for {what}")


class Stack:
    """The demo stack in a home of its own: the CLI against it, and the UI's GraphQL."""

    def __init__(self, home: Path) -> None:
        self.ui_port, self.api_port = free_port(), free_port()
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("GRAPH_RUNS_", "DAGSTER_"))
        }
        self.env.update({"GRAPH_RUNS_HOME": str(home), "GRAPH_RUNS_SENSOR_INTERVAL_SECONDS": "5"})
        self.env["GRAPH_RUNS_EXECUTION_API_URL"] = f"http://127.0.0.1:{self.api_port}"
        self.url = f"http://127.0.0.1:{self.ui_port}"
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> Any:
        """``graph-runs ARGS --json`` against this stack's home, parsed."""
        done = subprocess.run(
            [str(BIN / "graph-runs"), *args, "--json"],
            env=self.env,
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        return json.loads(done.stdout)

    def start(self, logfile: Path) -> None:
        """``graph-runs dev`` in a process group of its own, once its UI answers."""
        with logfile.open("wb") as out:
            self.process = subprocess.Popen(
                [str(BIN / "graph-runs"), "dev", "--port", str(self.ui_port),
                 "--api-port", str(self.api_port)],
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_for("the Dagster UI", START_TIMEOUT, lambda: self.graphql("{ version }"))

    def stop(self) -> None:
        """Stop the process group this started, and only it."""
        if self.process is None or self.process.poll() is not None:
            return
        # graph-runs dev stops dagster dev (webserver, daemon, code server) on SIGINT.
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def graphql(self, query: str) -> Any:
        """The ``data`` of the UI's answer to ``query``."""
        answer = httpx.post(f"{self.url}/graphql", json={"query": query}, timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]


def seed(stack: Stack) -> dict[str, str]:
    """Three owners' every-minute schedules, each fired once now; returns owner -> id."""
    ids = {}
    for owner, graph, account in (
        ("alice", "echo", "acme"),
        ("bob", "fail", "globex"),
        ("carol", "echo", "initech"),
    ):
        grant = stack.cli(
            "grants", "create", "--owner", owner, "--billing-account", account,
            "--scope", f"graph:execute:{graph}",
        )  # fmt: skip
        view = stack.cli(
            "schedules", "create", "--owner", owner, "--graph", graph, "--cron", "* * * * *",
            "--timezone", "Europe/Berlin", "--grant", grant["id"], "--input",
            json.dumps({"digest": owner}), "--pause-after-failures", "0",
        )  # fmt: skip
        stack.cli("schedules", "trigger", view["id"], "--requested-by", owner)
        ids[owner] = view["id"]
    return ids


def settled(stack: Stack, ids: dict[str, str]) -> bool:
    """True once each schedule has two outcomes, and the check marks Bob's failed."""
    for schedule_id in ids.values():
        counts = stack.cli("schedules", "describe", schedule_id)["counts"]
        if counts["succeeded"] + counts["failed"] < 2:
            return False
    node = stack.graphql(CHECKS_QUERY)["assetNodeOrError"]
    statuses = {c["name"]: c["partitionStatuses"] for c in node["assetChecksOrError"]["checks"]}
    # Only a schedule whose latest outcome is not a success is judged (at most one run a
    # tick): Alice's partition has no verdict to wait for.
    last = statuses.get("last_slot_ok") or {}
    return ids["bob"] in last.get("failedPartitions", [])


# A page: its address, and the texts to wait for.
Page = tuple[str, list[str]]


def lone_run(stack: Stack, schedule_id: str) -> None:
    """A trigger-now of Alice's alone, so that its run is hers and carries her tags.

    Every schedule here fires each minute, and a tick batches what is due within 25 s
    (5 s ticks, 20 s launch allowance): asked early in a minute, the trigger has a tick
    of its own.
    """
    deadline = time.monotonic() + 90
    while not 2 <= time.gmtime().tm_sec < 25 and time.monotonic() < deadline:
        time.sleep(1)
    stack.cli("schedules", "trigger", schedule_id, "--requested-by", "alice")

    def succeeded() -> bool:
        runs = stack.graphql(OWNER_RUNS_QUERY)["runsOrError"]["results"]
        return any(run["status"] == "SUCCESS" for run in runs)

    wait_for("a run of Alice's alone", SETTLE_TIMEOUT, succeeded)


def shoot(chromium: str, pages: dict[str, Page]) -> None:
    """Each page once the texts it is waited for show, past Dagster's first-visit prompt."""
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        for name, (url, texts) in pages.items():
            page.goto(url)
            skip = page.get_by_role("button", name="Skip")
            try:
                skip.click(timeout=5_000)  # the newsletter prompt of a first visit
            except PlaywrightTimeout:
                pass
            try:
                for text in texts:
                    page.get_by_text(text, exact=False).first.wait_for(state="visible")
            except PlaywrightTimeout:
                page.screenshot(path=str(OUT / f"failed-{name}"))
                raise SystemExit(f"screenshots: {name}: no {text!r} on {url}") from None
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(OUT / name))
            log.info("took %s", (OUT / name).relative_to(REPO))
        browser.close()


def main() -> int:
    """Take every picture; 2 without Chromium."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        log.error("screenshots: no chromium on PATH (Debian: apt-get install chromium)")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="graph-runs-shots-") as tmp:
        stack = Stack(Path(tmp) / "home")
        stack.cli("db", "upgrade")
        ids = seed(stack)
        try:
            stack.start(Path(tmp) / "dev.log")
            log.info("demo stack on %s; waiting for slots to fire and be judged", stack.url)
            wait_for("every schedule's outcomes and checks", SETTLE_TIMEOUT,
                     lambda: settled(stack, ids))  # fmt: skip
            lone_run(stack, ids["alice"])
            asset = f"{stack.url}/assets/{ASSET}"
            owner_runs = quote("tag:graph_runs/owner=alice")
            pages: dict[str, Page] = {
                "partitions.png": (f"{asset}?view=partitions", ["Materialized"]),
                # Alice's partition: its latest event names the owner and lists the last slots.
                "schedule-history.png": (
                    f"{asset}?view=partitions&partition={ids['alice']}",
                    ["last_slots", "alice"],
                ),
                # Bob's slots all failed: no materialization, but each outcome is an event.
                "failed-slot-events.png": (
                    f"{asset}?view=events&partition={ids['bob']}",
                    ["graph_failed"],
                ),
                "checks.png": (f"{asset}?view=checks", ["last_slot_ok"]),
                "runs-by-owner.png": (f"{stack.url}/runs?q%5B0%5D={owner_runs}", ["Success"]),
            }
            shoot(chromium, pages)
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
