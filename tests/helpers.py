"""Small builders shared by tests: grants and schedules written through the real API."""

import datetime as dt
from typing import Any

import sqlalchemy as sa

from graph_runs.access.grants import Grant, create_grant
from graph_runs.core.cron import format_utc
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.scheduling.claim import claim_due_slots
from graph_runs.scheduling.schedules import create_schedule
from graph_runs.store.tables import run_ledger


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


def claim_at(conn: sa.Connection, now: dt.datetime) -> Any:
    """One claim, as the sensor's tick makes it."""
    return claim_due_slots(conn, now=now, schedule_limits=ScheduleLimits())


def ledger_statuses(conn: sa.Connection, schedule_id: str) -> list[tuple[str | None, str]]:
    """(slot, status) of a schedule's ledger rows, oldest slot first; trigger-now rows last."""
    rows = conn.execute(
        sa.select(run_ledger.c.scheduled_for, run_ledger.c.status)
        .where(run_ledger.c.schedule_id == schedule_id)
        .order_by(run_ledger.c.scheduled_for.is_(None), run_ledger.c.scheduled_for)
    )
    return [
        (None if r.scheduled_for is None else format_utc(r.scheduled_for), r.status) for r in rows
    ]


def set_run_status(
    conn: sa.Connection, schedule_id: str, slot: str, status: str, dagster_run_id: str | None = None
) -> str:
    """Move a slot's ledger row as the sensor or the ops would; returns its ledger id."""
    row = conn.execute(
        sa.select(run_ledger.c.id).where(
            run_ledger.c.schedule_id == schedule_id, run_ledger.c.scheduled_for == at(slot)
        )
    ).one()
    conn.execute(
        run_ledger.update()
        .where(run_ledger.c.id == row.id)
        .values(status=status, dagster_run_id=dagster_run_id)
    )
    return str(row.id)


def waiting_on_a_lock(engine: sa.Engine, pid: int) -> bool:
    """Whether the Postgres backend ``pid`` is blocked on a lock right now."""
    with engine.connect() as conn:
        query = sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid")
        return conn.execute(query, {"pid": pid}).scalar_one_or_none() == "Lock"
