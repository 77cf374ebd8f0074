"""graph_runs.scheduling.revocation: revoking a grant pauses its schedules and says how many.

Real SQLite and PostgreSQL databases.
"""

import pytest
import sqlalchemy as sa

from graph_runs.core.errors import NotFound
from graph_runs.scheduling.revocation import revoke_and_pause
from graph_runs.scheduling.schedules import get_schedule, pause_schedule
from tests.helpers import at, make_grant, make_schedule

NOW = at("2026-11-22T10:00:30Z")


def test_revoking_pauses_the_grants_running_schedules_once(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        other = make_grant(conn, NOW)
        first = make_schedule(conn, NOW, grant)
        second = make_schedule(conn, NOW, grant, cron="0 9 * * *")
        already = make_schedule(conn, NOW, grant, cron="0 10 * * *")
        unrelated = make_schedule(conn, NOW, other)
        pause_schedule(conn, already["id"], now=NOW, note="holiday", by="ana")
        later = at("2026-11-22T11:00:00Z")
        revoked, paused = revoke_and_pause(conn, grant.id, now=later, by="security")
        assert (paused, revoked.revoked_by) == (2, "security")
        for view in (first, second):
            state = get_schedule(conn, view["id"])
            assert not state["enabled"] and state["paused_by"] == "graph-runs (grant)"
            assert state["pause_note"] == (
                f"grant {grant.id} was revoked by security at 2026-11-22T11:00:00Z"
            )
        # A schedule paused before keeps its own note; another grant's is untouched.
        assert get_schedule(conn, already["id"])["pause_note"] == "holiday"
        assert get_schedule(conn, unrelated["id"])["enabled"]
        _, again = revoke_and_pause(conn, grant.id, now=later, by="security")
        assert again == 0
        with pytest.raises(NotFound):
            revoke_and_pause(conn, "grt_nope", now=later, by="security")
