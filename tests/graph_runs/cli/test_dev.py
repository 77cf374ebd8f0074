"""graph_runs.cli.dev: the demo seed that `make dev` applies on every start.

Real database; the processes that `graph-runs dev` starts are covered by the e2e tier.
"""

import sqlalchemy as sa

from graph_runs.access.grants import list_grants, revoke_grant
from graph_runs.cli.dev import seed_demo
from graph_runs.scheduling.schedules import list_schedules
from graph_runs.settings import load_settings
from tests.helpers import at

NOW = at("2026-11-22T10:00:30Z")


def test_seed_creates_a_grant_and_an_every_minute_schedule_once(engine: sa.Engine) -> None:
    settings = load_settings({})
    with engine.begin() as conn:
        done = seed_demo(conn, settings, NOW)
        assert len(done) == 2
        assert seed_demo(conn, settings, NOW) == []
        (schedule,) = list_schedules(conn, "demo")
        assert (schedule["cron"], schedule["graph_id"]) == ("* * * * *", "echo")
        assert schedule["next_run_at"] == "2026-11-22T10:01:00Z"


def test_seed_replaces_a_revoked_demo_grant_but_keeps_the_schedule(engine: sa.Engine) -> None:
    settings = load_settings({})
    with engine.begin() as conn:
        seed_demo(conn, settings, NOW)
        (grant,) = list_grants(conn, "demo")
        revoke_grant(conn, grant.id, now=NOW, by="test")
        assert seed_demo(conn, settings, NOW) == [
            f"created demo grant {list_grants(conn, 'demo')[1].id}"
        ]
        assert len(list_schedules(conn, "demo")) == 1
