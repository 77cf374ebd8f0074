"""Benchmarks of the management API against PostgreSQL (``make bench``; skipped by ``make test``).

`graph-runs api serve` runs in its own process on a database of 100,000 schedules, with
20 connections at once from wrk (Debian's package): GET of one schedule, a page of the list, and PUT
upserts. The anchor, measured in the same run, is a bare Starlette JSON endpoint under the
same uvicorn settings, in a process of its own.
"""

import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from graph_runs.access.api_keys import SCOPES, create_api_key
from graph_runs.access.grants import create_grant
from graph_runs.scheduling.listing import encode_cursor
from graph_runs.store.db import make_engine, upgrade
from tests.benchmarks.harness import insert_schedules, show, write_report
from tests.conftest import private_postgres_database
from tests.e2e.faults import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCHEDULES = 100_000
CLIENTS = 20
# Distinct requests in each script (wrk sends them round and round) and seconds of load.
REQUESTS = 3000
DURATION = int(os.environ.get("BENCH_API_SECONDS", "15"))
PREVIEW = "/v1/preview?cron=0+9+*+*+*&from=2026-12-07T00:00:00Z&count=1"
# Server processes of the API and of the anchor alike: the machine's two cores.
WORKERS = int(os.environ.get("BENCH_API_WORKERS", "2"))
CREATED = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
BARE_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def one(request):
    return JSONResponse({"id": "sch_0000001", "owner": "o0", "status": "active"})


app = Starlette(routes=[Route("/one", one)])
"""

pytestmark = pytest.mark.postgres


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _lua(token: str, requests: list[tuple[str, str, Any]]) -> str:
    """A wrk script that sends ``requests`` in turn, round and round, with the key."""
    items = ",\n".join(
        f"{{{json.dumps(m)}, {json.dumps(p)}, {json.dumps(json.dumps(b) if b else '')}}}"
        for m, p, b in requests
    )
    return f"""
local requests = {{
{items}
}}
local n = 0
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n % #requests + 1
  local r = requests[n]
  local body = nil
  if r[3] ~= "" then body = r[3] end
  return wrk.format(r[1], r[2], nil, body)
end
"""


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number = re.match(r"([0-9.]+)([a-z]+)", text)
    assert number, text
    return float(number.group(1)) * UNITS[number.group(2)]


def _load(
    base: str, token: str, requests: list[tuple[str, str, Any]], workdir: Path
) -> dict[str, float]:
    """Wrk with CLIENTS connections for DURATION; rate, p50 and p99 of the answers.

    wrk, not a Python client: on two cores a Python load generator was the bottleneck (211
    requests/s against a bare endpoint that serves thousands).
    """
    script = workdir / f"load-{len(list(workdir.iterdir()))}.lua"
    script.write_text(_lua(token, requests))
    done = subprocess.run(
        ["wrk", "-t1", f"-c{CLIENTS}", f"-d{DURATION}s", "--latency", "-s", str(script), base],
        capture_output=True,
        text=True,
        timeout=DURATION + 60,
        check=True,
    )
    out = done.stdout
    assert "Non-2xx" not in out, out
    assert "Socket errors" not in out, out
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, flags=re.M))
    return {
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "rate": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
    }


@pytest.fixture
def populated(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    with private_postgres_database("graph_runs_api_bench") as url:
        engine = make_engine(url)
        upgrade(engine)
        with engine.begin() as conn:
            insert_schedules(conn, total=SCHEDULES, due=0, due_at=CREATED, created=CREATED)
            # Spread over time, so that pages are real ranges of the (created_at, id) index.
            conn.execute(
                sa.text(
                    "UPDATE schedules SET created_at = created_at + "
                    "(CAST(substr(id, 5) AS integer) * interval '1 second')"
                )
            )
            grant = create_grant(
                conn, owner="u", billing_account="u-billing", scopes=["graph:execute:*"],
                now=CREATED,
            )  # fmt: skip
            _, token = create_api_key(conn, name="bench", owner=None, scopes=list(SCOPES),
                                      now=CREATED)  # fmt: skip
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
        engine.dispose()
        yield url, token, grant.id


def test_api_rates_against_a_bare_endpoint(
    benchmark, tmp_path: Path, populated: tuple[str, str, str]
) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk): it is the load generator")
    url, token, grant_id = populated
    api_port, bare_port = free_port(), free_port()
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "GRAPH_RUNS_DATABASE_URL": url,
        "GRAPH_RUNS_MAX_SCHEDULES_PER_OWNER": "1000000",
    }
    serve = [str(BIN / "graph-runs"), "api", "serve", "--port", str(api_port)]
    api = _start([*serve, "--workers", str(WORKERS)], env, tmp_path / "a")
    (tmp_path / "bare_app.py").write_text(BARE_APP)
    bare = _start(
        [
            *(sys.executable, "-m", "uvicorn", "bare_app:app", "--app-dir", str(tmp_path)),
            *("--port", str(bare_port), "--workers", str(WORKERS), "--log-level", "warning"),
        ],
        env,
        tmp_path / "b",
    )
    try:
        base = f"http://127.0.0.1:{api_port}"
        _wait_up(f"{base}/readyz", api, tmp_path / "a")
        _wait_up(f"http://127.0.0.1:{bare_port}/one", bare, tmp_path / "b")
        rng = random.Random(7)
        gets = [
            ("GET", f"/v1/schedules/sch_{rng.randrange(SCHEDULES):07d}", None)
            for _ in range(REQUESTS)
        ]
        pages = []
        for _ in range(REQUESTS // 2):
            i = rng.randrange(SCHEDULES - 200)
            cursor = encode_cursor(CREATED + dt.timedelta(seconds=i), f"sch_{i:07d}")
            pages.append(("GET", f"/v1/schedules?limit=100&cursor={cursor}", None))
        upserts = [
            (
                "PUT",
                f"/v1/schedules/by-external-id/u/ext-{n % 500}",
                {
                    "graph_id": "echo",
                    "cron": f"{(n // 500) % 60} 9 * * *",
                    "grant_id": grant_id,
                },
            )
            for n in range(REQUESTS // 2)
        ]
        figures: dict[str, dict[str, float]] = {}

        def measure() -> None:
            # One after the other, in one run: the anchor first, on the same machine's load.
            bare_url = f"http://127.0.0.1:{bare_port}"
            scripts = tmp_path / "wrk"
            scripts.mkdir()
            figures["bare"] = _load(bare_url, token, [("GET", "/one", None)], scripts)
            # What bounds the API, in two steps: FastAPI and our middleware alone, then a
            # route with its key checked (cached) and its query parameters read, no database.
            figures["health"] = _load(base, token, [("GET", "/healthz", None)], scripts)
            figures["preview"] = _load(base, token, [("GET", PREVIEW, None)], scripts)
            figures["get"] = _load(base, token, gets, scripts)
            figures["page"] = _load(base, token, pages, scripts)
            figures["upsert"] = _load(base, token, upserts, scripts)

        benchmark.pedantic(measure, rounds=1, iterations=1)
        bare_figures, get_figures = figures["bare"], figures["get"]
        page_figures, upsert_figures = figures["page"], figures["upsert"]
    finally:
        _stop(api)
        _stop(bare)
    ratio = get_figures["rate"] / bare_figures["rate"]
    result = {
        "schedules": SCHEDULES,
        "clients": CLIENTS,
        "bare": bare_figures,
        "health": figures["health"],
        "preview": figures["preview"],
        "get": get_figures,
        "page": page_figures,
        "upsert": upsert_figures,
        "get_to_bare": ratio,
    }
    write_report("api", result)

    def row(name: str, f: dict[str, float]) -> tuple[str, str]:
        return name, f"{f['rate']:.0f} req/s, p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms"

    show(
        f"Management API, PostgreSQL, {SCHEDULES:,} schedules, {CLIENTS} connections, "
        f"{WORKERS} server process(es)",
        [
            row("bare Starlette endpoint", bare_figures),
            row("GET /healthz (FastAPI, no key, no database)", figures["health"]),
            row("GET /v1/preview (key, no database)", figures["preview"]),
            row("GET /v1/schedules/{id}", get_figures),
            row("GET /v1/schedules (page of 100)", page_figures),
            row("PUT upsert", upsert_figures),
            ("GET rate / bare rate", f"{ratio:.2f}"),
        ],
    )
