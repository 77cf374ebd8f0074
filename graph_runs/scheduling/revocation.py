"""Revoking a grant pauses the schedules that run under it.

Without this, every slot of such a schedule would fail with ``grant_revoked`` until someone
noticed; paused, the schedule says why and waits for a new grant (``schedules update
--grant``, then ``resume``).
"""

import datetime as dt

import sqlalchemy as sa

from graph_runs.access.grants import Grant, get_grant, revoke_grant
from graph_runs.core.cron import format_utc
from graph_runs.scheduling.schedules import pause_schedule
from graph_runs.store.tables import schedules

GRANT_PAUSER = "graph-runs (grant)"


def pause_schedules_of_grant(
    conn: sa.Connection, grant_id: str, *, now: dt.datetime, note: str
) -> int:
    """Pause every running schedule under ``grant_id``; returns how many were paused."""
    ids = list(
        conn.execute(
            sa.select(schedules.c.id).where(
                schedules.c.grant_id == grant_id,
                schedules.c.enabled,
                schedules.c.status.in_(["active", "error"]),
            )
        ).scalars()
    )
    for schedule_id in ids:
        pause_schedule(conn, schedule_id, now=now, note=note, by=GRANT_PAUSER)
    return len(ids)


def revoke_and_pause(
    conn: sa.Connection, grant_id: str, *, now: dt.datetime, by: str
) -> tuple[Grant, int]:
    """Revoke a grant and pause its schedules; returns the grant and the number paused.

    Revoking a revoked grant changes nothing and pauses nothing more.
    """
    existing = get_grant(conn, grant_id)
    grant = revoke_grant(conn, grant_id, now=now, by=by)  # raises NotFound
    if existing is not None and existing.revoked_at is not None:
        return grant, 0
    note = f"grant {grant_id} was revoked by {by} at {format_utc(now)}"
    return grant, pause_schedules_of_grant(conn, grant_id, now=now, note=note)
