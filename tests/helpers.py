"""Small builders shared by tests: grants and schedules written through the real API."""

import datetime as dt
from typing import Any

import sqlalchemy as sa

from graph_runs.grants import Grant, create_grant
from graph_runs.schedule_spec import ScheduleLimits
from graph_runs.schedules import create_schedule


def at(text: str) -> dt.datetime:
    """An exact UTC instant from ``YYYY-MM-DDTHH:MM:SSZ``."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def make_grant(
    conn: sa.Connection, now: dt.datetime, *, owner: str = "alice", scopes: list[str] | None = None
) -> Grant:
    return create_grant(
        conn,
        owner=owner,
        billing_account=f"{owner}-billing",
        scopes=scopes or ["graph:execute:*"],
        now=now,
        connection_ids=["conn_b", "conn_a"],
    )


def make_schedule(
    conn: sa.Connection, now: dt.datetime, grant: Grant, **fields: Any
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "owner": grant.owner,
        "graph_id": "echo",
        "input": {"topic": "news"},
        "cron": "* * * * *",
        "timezone": "UTC",
        "grant_id": grant.id,
    }
    raw.update(fields)
    return create_schedule(conn, raw, limits=ScheduleLimits(), now=now)
