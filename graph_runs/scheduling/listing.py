"""Pages of schedules and of one schedule's slots, by keyset: what the HTTP API lists.

A page ends at a row's ``(created_at, id)``; the next page starts strictly after it. So a page
costs a range scan of ``ix_schedules_created_id`` (or its owner twin) or
``ix_graph_runs_schedule_created``, however deep, never an OFFSET. Rows inserted while a
client pages appear in order or not at all: none is shown twice, none that existed is skipped.
The cursor is opaque to clients: base64url of the last row's position.
"""

import base64
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from graph_runs.core.cron import format_utc_or_none, parse_instant
from graph_runs.core.errors import InvalidInput
from graph_runs.core.money import micros_to_usd
from graph_runs.scheduling.schedules import view
from graph_runs.store.tables import charge_receipts, run_ledger, schedules

MAX_PAGE = 500
SCHEDULE_STATUSES = ("active", "completed", "error")


@dataclass(frozen=True)
class Page:
    """One page of views and the cursor of the next one (None: this was the last)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(created_at: dt.datetime, row_id: str) -> str:
    """The cursor that resumes after the row at ``(created_at, row_id)``."""
    text = json.dumps([created_at.isoformat(), row_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """The position a cursor names; InvalidInput names ``cursor`` for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, row_id = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(row_id, str) or not isinstance(created, str):
            raise ValueError(cursor)
        return parse_instant(created), row_id
    except (ValueError, TypeError, UnicodeError):
        raise InvalidInput("cursor", "is not a cursor this API gave out") from None


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput("limit", f"must be from 1 to {MAX_PAGE}, got {limit}")


def page_schedules(
    conn: sa.Connection,
    *,
    limit: int,
    cursor: str | None = None,
    owner: str | None = None,
    status: str | None = None,
    graph_id: str | None = None,
    external_id: str | None = None,
    enabled: bool | None = None,
) -> Page:
    """Schedules not deleted, oldest first, filtered; ``limit`` at most ``MAX_PAGE``."""
    _check_limit(limit)
    if status is not None and status not in SCHEDULE_STATUSES:
        raise InvalidInput("status", f"must be one of {', '.join(SCHEDULE_STATUSES)}")
    query = sa.select(schedules).where(schedules.c.status != "deleted")
    for column, value in (
        (schedules.c.owner, owner),
        (schedules.c.status, status),
        (schedules.c.graph_id, graph_id),
        (schedules.c.external_id, external_id),
        (schedules.c.enabled, enabled),
    ):
        if value is not None:
            query = query.where(column == value)
    if cursor is not None:
        after, after_id = decode_cursor(cursor)
        query = query.where(sa.tuple_(schedules.c.created_at, schedules.c.id) > (after, after_id))
    rows = list(
        conn.execute(query.order_by(schedules.c.created_at, schedules.c.id).limit(limit + 1))
    )
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if more else None
    return Page(
        [view(row) for row in rows],
        None if last is None else encode_cursor(last.created_at, last.id),
    )


SLOTS = sa.select(
    run_ledger,
    charge_receipts.c.cost_micros,
    charge_receipts.c.total_tokens,
    charge_receipts.c.prompt_tokens,
    charge_receipts.c.completion_tokens,
).select_from(
    run_ledger.outerjoin(charge_receipts, charge_receipts.c.graph_run_id == run_ledger.c.id)
)


def slot_view(row: Any, dagster_ui_url: str | None) -> dict[str, Any]:
    """One ledger row as ``GET /v1/schedules/{id}/slots`` shows it."""
    cost = micros_to_usd(row.cost_micros)
    link = None
    if dagster_ui_url and row.dagster_run_id:
        link = f"{dagster_ui_url.rstrip('/')}/runs/{row.dagster_run_id}"
    return {
        "ledger_id": row.id,
        "slot": format_utc_or_none(row.scheduled_for),
        "trigger_kind": row.trigger_kind,
        "requested_by": row.requested_by,
        "status": row.status,
        "reason": row.error_code,
        "reason_message": row.error_message,
        "cost_usd": None if cost is None else str(cost),
        "over_budget": bool(row.over_budget),
        "tokens": row.total_tokens,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "api_run_id": row.api_run_id,
        "dagster_run_id": row.dagster_run_id,
        "dagster_run_url": link,
        "created_at": format_utc_or_none(row.created_at),
        "started_at": format_utc_or_none(row.started_at),
        "finished_at": format_utc_or_none(row.finished_at),
    }


def page_slots(
    conn: sa.Connection,
    schedule_id: str,
    *,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    dagster_ui_url: str | None = None,
) -> Page:
    """The schedule's ledger rows, newest first, written in ``[start, end)`` when given."""
    _check_limit(limit)
    if start is not None and end is not None and end <= start:
        raise InvalidInput("to", "must be after from")
    query = SLOTS.where(run_ledger.c.schedule_id == schedule_id)
    if status is not None:
        query = query.where(run_ledger.c.status == status)
    if start is not None:
        query = query.where(run_ledger.c.created_at >= start)
    if end is not None:
        query = query.where(run_ledger.c.created_at < end)
    if cursor is not None:
        before, before_id = decode_cursor(cursor)
        query = query.where(
            sa.tuple_(run_ledger.c.created_at, run_ledger.c.id) < (before, before_id)
        )
    order = (run_ledger.c.created_at.desc(), run_ledger.c.id.desc())
    rows = list(conn.execute(query.order_by(*order).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if more else None
    return Page(
        [slot_view(row, dagster_ui_url) for row in rows],
        None if last is None else encode_cursor(last.created_at, last.id),
    )
