"""graph_runs.scheduling.describe: what `schedules describe --json` answers, on SQLite and Postgres.

Counts by outcome, runs in flight, recent actions and next fire times with jitter applied
and bounded by max_runs.
"""

import datetime as dt

import sqlalchemy as sa

from graph_runs.core.policies import jitter_offset
from graph_runs.scheduling.describe import describe_schedule
from graph_runs.scheduling.schedules import pause_schedule
from tests.helpers import at, claim_at, make_grant, make_schedule, set_run_status

CREATED = at("2026-11-22T08:00:30Z")


def test_describe_counts_missed_and_skipped_and_shows_jittered_fires(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="0 * * * *", jitter_seconds=300, max_runs=4)
        sid = view["id"]
        # Down from 08:00 to 11:10: 09:00 and 10:00 are missed, 11:00 fires (if due yet).
        eleven = at("2026-11-22T11:00:00Z")
        seen = eleven + jitter_offset(sid, eleven, 300) + dt.timedelta(seconds=1)
        claim_at(conn, seen)
        set_run_status(conn, sid, "2026-11-22T11:00:00Z", "running", "run-11")
        twelve = at("2026-11-22T12:00:00Z")
        claim_at(conn, twelve + jitter_offset(sid, twelve, 300) + dt.timedelta(seconds=1))
        described = describe_schedule(conn, sid, now=twelve)
    counts = described["counts"]
    assert (counts["missed"], counts["skipped_overlap"], counts["in_flight"]) == (2, 1, 1)
    assert (counts["runs"], counts["scheduled_runs"], counts["remaining_scheduled_runs"]) == (
        1,
        1,
        3,
    )
    assert [a["scheduled_for"] for a in described["running"]] == ["2026-11-22T11:00:00Z"]
    assert described["running"][0]["dagster_run_id"] == "run-11"
    assert [a["status"] for a in described["recent_actions"]] == [
        "skipped_overlap",
        "running",
        "missed",
        "missed",
    ]
    fires = described["next_fire_times"]
    # Three runs are left under max_runs, so three fire times, each with its own jitter.
    assert [f["slot"] for f in fires] == [
        "2026-11-22T13:00:00Z",
        "2026-11-22T14:00:00Z",
        "2026-11-22T15:00:00Z",
    ]
    for fire in fires:
        slot = at(fire["slot"])
        assert at(fire["fires_at"]) == slot + jitter_offset(sid, slot, 300)
    assert described["policies"]["jitter"] == "5m"


def test_describe_of_a_paused_schedule_shows_the_pause_and_no_fires(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant)
        pause_schedule(conn, view["id"], now=CREATED, note="budget review", by="ana")
        described = describe_schedule(conn, view["id"], now=CREATED)
    assert described["pause"] == {
        "paused": True,
        "note": "budget review",
        "by": "ana",
        "at": "2026-11-22T08:00:30Z",
    }
    assert described["next_fire_times"] == []
