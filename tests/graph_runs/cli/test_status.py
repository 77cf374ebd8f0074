"""graph_runs.cli.status: ``graph-runs status`` as a probe: exit 0 healthy, 1 not, 2 bad input.

Runs main() in-process against a real database named by GRAPH_RUNS_DATABASE_URL, on the
wall clock, as an operator's probe does.
"""

import datetime as dt

from graph_runs.api.app import create_app
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.store.db import make_engine
from tests.conftest import serving
from tests.e2e.faults import free_port
from tests.helpers import make_grant, make_schedule


def test_status_exits_0_when_healthy_and_1_naming_the_breach(cli, database_url: str) -> None:
    code, report, _ = cli("status", "--json")
    assert code == 0 and report["healthy"] and report["problems"] == []
    code, text, _ = cli("status")
    assert code == 0 and text.startswith("graph-runs at ") and "healthy" in text
    # A schedule whose slot came due ten minutes ago, and no sensor has claimed it.
    created = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=12)
    engine = make_engine(database_url)
    with engine.begin() as conn:
        make_schedule(conn, created, make_grant(conn, created), cron="*/10 * * * *")
    engine.dispose()
    code, text, _ = cli("status")
    assert code == 1
    assert "UNHEALTHY" in text and "problem: due backlog (slots): 1 > 0" in text
    code, _, _ = cli("status", "--max-backlog", "-1", "--max-oldest-pending", "-1")
    assert code == 0


def test_status_refuses_a_negative_grace_in_one_line(cli) -> None:
    code, _, err = cli("status", "--grace", "-5")
    assert code == 2 and err.count("\n") == 1 and "grace" in err


def test_status_probes_the_management_api_when_asked(cli, database_url: str) -> None:
    engine = make_engine(database_url)
    app = create_app(engine, clock=lambda: dt.datetime.now(dt.UTC), limits=ScheduleLimits())
    with serving(app) as url:
        code, report, _ = cli("status", "--api-url", url, "--json")
    assert code == 0 and report["management_api"] == {"url": url, "ready": True, "problems": []}
    assert report["api_keys"] == {"live": 0, "revoked": 0}
    closed = f"http://127.0.0.1:{free_port()}"
    code, out, _ = cli("status", "--api-url", closed)
    assert code == 1
    assert f"management API at {closed}: NOT READY: unreachable (ConnectError)" in out
    app.state.context.dispose()
    engine.dispose()
