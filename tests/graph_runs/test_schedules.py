"""graph_runs.schedules: validation names the bad field and writes nothing; lifecycle calls.

Real SQLite and PostgreSQL databases.
"""

from typing import Any

import pytest
import sqlalchemy as sa

from graph_runs.errors import InvalidInput, NotFound
from graph_runs.schedule_spec import ScheduleLimits
from graph_runs.schedules import (
    create_schedule,
    delete_schedule,
    get_schedule,
    pause_schedule,
    resume_schedule,
)
from graph_runs.tables import audit_log, schedules
from tests.helpers import at, make_grant, make_schedule

NOW = at("2026-11-22T10:00:30Z")


def count(conn: sa.Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"cron": "not cron"}, "cron", "5-field"),
        ({"timezone": "Europe/Atlantis"}, "timezone", "unknown IANA"),
        ({"cron": None}, "cron", "either a cron expression or a one-time run_at"),
        ({"input": {"blob": "x" * 70_000}}, "input", "the limit is 65536"),
        ({"graph_id": "bad graph id"}, "graph_id", "pattern"),
        ({"max_cost_usd": "-1"}, "max_cost_usd", "greater than or equal to 0"),
        ({"timeout_seconds": 0}, "timeout_seconds", "greater than 0"),
        ({"grant_id": "grt_nope"}, "grant_id", "not found"),
    ],
)
def test_bad_input_names_its_field_and_writes_nothing(
    engine: sa.Engine, fields: dict[str, Any], field: str, fragment: str
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        before = count(conn, schedules), count(conn, audit_log)
        with pytest.raises(InvalidInput, match=fragment) as caught:
            make_schedule(conn, NOW, grant, **fields)
        assert caught.value.field == field
        assert (count(conn, schedules), count(conn, audit_log)) == before


def test_interval_below_the_configured_minimum_is_refused(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        raw = {"owner": "alice", "graph_id": "echo", "cron": "*/2 * * * *", "grant_id": grant.id}
        with pytest.raises(InvalidInput, match="fires every 120 s .* minimum interval is 300 s"):
            create_schedule(conn, raw, limits=ScheduleLimits(min_interval_seconds=300), now=NOW)
        assert count(conn, schedules) == 0


def test_schedules_per_owner_are_limited(engine: sa.Engine) -> None:
    limits = ScheduleLimits(max_schedules_per_owner=2)
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        raw = {"owner": "alice", "graph_id": "echo", "cron": "0 * * * *", "grant_id": grant.id}
        create_schedule(conn, raw, limits=limits, now=NOW)
        create_schedule(conn, raw, limits=limits, now=NOW)
        with pytest.raises(InvalidInput, match="alice has 2 schedules; the limit is 2") as caught:
            create_schedule(conn, raw, limits=limits, now=NOW)
        assert caught.value.field == "owner"


def test_grant_of_another_owner_is_refused(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW, owner="bob")
        raw = {"owner": "alice", "graph_id": "echo", "cron": "0 * * * *", "grant_id": grant.id}
        with pytest.raises(InvalidInput, match="belongs to bob"):
            create_schedule(conn, raw, limits=ScheduleLimits(), now=NOW)


def test_create_computes_next_run_at_in_the_schedules_zone(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant, cron="0 9 * * 1-5", timezone="Europe/Berlin")
    # 2026-11-22 is a Sunday: the next weekday 09:00 in Berlin (CET) is Monday 08:00Z.
    assert view["next_run_at"] == "2026-11-23T08:00:00Z"
    assert view["status"] == "active" and view["runs_total"] == 0


def test_pause_resume_and_delete(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant, cron="0 * * * *")
        paused = pause_schedule(conn, view["id"], now=NOW, note="holiday")
        assert (paused["enabled"], paused["pause_note"]) == (False, "holiday")
        assert pause_schedule(conn, view["id"], now=at("2026-11-22T11:00:00Z"), note="x") == paused
        later = at("2026-11-22T15:20:00Z")
        resumed = resume_schedule(conn, view["id"], now=later, limits=ScheduleLimits())
        # Resuming starts from now: the slots of 11:00 .. 15:00 are not fired.
        assert resumed["enabled"] and resumed["next_run_at"] == "2026-11-22T16:00:00Z"
        assert delete_schedule(conn, view["id"], now=later) is True
        assert delete_schedule(conn, view["id"], now=later) is False
        with pytest.raises(NotFound):
            get_schedule(conn, view["id"])
        assert conn.execute(sa.select(schedules.c.status)).scalar_one() == "deleted"
