"""``schedules describe``: one schedule's state, the way Temporal's describe answers.

Its recent actions, its next fire times with jitter applied, its counts by outcome, its runs
in flight, its pause and the policies in force, read in a handful of queries.
"""

import datetime as dt
import itertools
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from graph_runs.core.cron import format_utc, format_utc_or_none
from graph_runs.core.errors import InvalidInput
from graph_runs.core.money import micros_to_usd
from graph_runs.core.schedule_spec import UNLIMITED, cursor_of, spec_from_row
from graph_runs.core.slot_plan import slots_after
from graph_runs.core.statuses import IN_FLIGHT
from graph_runs.scheduling.schedules import schedule_row, view
from graph_runs.store.tables import IN_FLIGHT_RUN, charge_receipts, run_ledger

RECENT_ACTIONS = 10
NEXT_FIRES = 10
# Statuses that mean a run happened or is happening, for the "runs" count.
RAN = ("succeeded", "failed", "running", "queued", "pending", "cancelling")


def _action(row: Any) -> dict[str, Any]:
    cost = micros_to_usd(row.cost_micros)
    return {
        "ledger_id": row.id,
        "scheduled_for": format_utc_or_none(row.scheduled_for),
        "trigger_kind": row.trigger_kind,
        "requested_by": row.requested_by,
        "status": row.status,
        "started_at": format_utc_or_none(row.started_at),
        "finished_at": format_utc_or_none(row.finished_at),
        "dagster_run_id": row.dagster_run_id,
        "api_run_id": row.api_run_id,
        "cost_usd": None if cost is None else str(cost),
        "error_code": row.error_code,
        "error_message": row.error_message,
        "over_budget": bool(row.over_budget),
    }


def next_fire_times(row: Any, now: dt.datetime, count: int = NEXT_FIRES) -> list[dict[str, str]]:
    """The next slots and when each fires (jitter applied), within the schedule's bounds."""
    if not row.enabled or row.status != "active":
        return []
    try:
        spec = spec_from_row(row, UNLIMITED, now)
    except InvalidInput:
        return []  # the sensor marks such a row `error` with the reason on its next tick
    policies = spec.policies()
    remaining = None if spec.max_runs is None else max(spec.max_runs - row.runs_total, 0)
    limit = count if remaining is None else min(count, remaining)
    cron = spec.cron_schedule()
    if cron is None:
        assert spec.run_at is not None
        slots = [spec.run_at] if limit else []
    else:
        cursor = cursor_of(row, spec, now)
        assert cursor is not None
        slots = list(itertools.islice(slots_after(cron, policies, cursor), limit))
    return [
        {"slot": format_utc(s), "fires_at": format_utc(policies.due_at(row.id, s))} for s in slots
    ]


WITH_COST = sa.select(run_ledger, charge_receipts.c.cost_micros).select_from(
    run_ledger.outerjoin(charge_receipts, charge_receipts.c.graph_run_id == run_ledger.c.id)
)
# Schedules per statement in recent_actions: well under any database's bind limit.
RECENT_CHUNK = 200


def recent_actions(
    conn: sa.Connection,
    schedule_ids: Collection[str],
    limit: int = RECENT_ACTIONS,
    statuses: Collection[str] | None = None,
) -> dict[str, list[Any]]:
    """Each schedule's last ``limit`` ledger rows with their cost, newest first.

    ``statuses``, when given, keeps only rows in them (the last outcomes, say).

    One arm per schedule in a UNION ALL, each a short range scan of
    ``ix_graph_runs_schedule_created``: a window over the schedules' rows would read every
    slot a schedule ever had, and an every-minute schedule has half a million a year.
    """
    found: dict[str, list[Any]] = {}
    ids = sorted(set(schedule_ids))
    kept = WITH_COST if statuses is None else WITH_COST.where(run_ledger.c.status.in_(statuses))
    for start in range(0, len(ids), RECENT_CHUNK):
        arms = [
            kept.where(run_ledger.c.schedule_id == schedule_id)
            .order_by(
                run_ledger.c.created_at.desc(),
                run_ledger.c.scheduled_for.desc(),
                run_ledger.c.id.desc(),
            )
            .limit(limit)
            .subquery()
            .select()
            for schedule_id in ids[start : start + RECENT_CHUNK]
        ]
        for row in conn.execute(sa.union_all(*arms)):
            found.setdefault(row.schedule_id, []).append(row)
    for rows in found.values():
        rows.sort(key=lambda r: (r.created_at, r.scheduled_for or r.created_at, r.id), reverse=True)
    return found


def describe_schedule(conn: sa.Connection, schedule_id: str, *, now: dt.datetime) -> dict[str, Any]:
    """Everything ``schedules describe --json`` prints; raises NotFound."""
    row = schedule_row(conn, schedule_id)
    recent = recent_actions(conn, [schedule_id]).get(schedule_id, [])
    in_flight = conn.execute(
        WITH_COST.where(IN_FLIGHT_RUN, run_ledger.c.schedule_id == schedule_id).order_by(
            run_ledger.c.created_at, run_ledger.c.scheduled_for
        )
    )
    by_status: dict[str, int] = dict(
        conn.execute(
            sa.select(run_ledger.c.status, sa.func.count())
            .where(run_ledger.c.schedule_id == schedule_id)
            .group_by(run_ledger.c.status)
        ).all()
    )
    by_kind: dict[str, int] = dict(
        conn.execute(
            sa.select(run_ledger.c.trigger_kind, sa.func.count())
            .where(run_ledger.c.schedule_id == schedule_id, run_ledger.c.status.in_(RAN))
            .group_by(run_ledger.c.trigger_kind)
        ).all()
    )
    over_budget = conn.execute(
        sa.select(sa.func.count()).where(
            run_ledger.c.schedule_id == schedule_id, run_ledger.c.over_budget
        )
    ).scalar_one()
    spent = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(charge_receipts.c.cost_micros), 0)).where(
            charge_receipts.c.schedule_id == schedule_id
        )
    ).scalar_one()
    data = view(row)
    counts = {
        "runs": sum(by_status.get(s, 0) for s in RAN),
        "succeeded": by_status.get("succeeded", 0),
        "failed": by_status.get("failed", 0),
        "missed": by_status.get("missed", 0),
        "skipped_overlap": by_status.get("skipped_overlap", 0),
        "skipped_paused": by_status.get("skipped_paused", 0),
        "skipped_budget": by_status.get("skipped_budget", 0),
        "cancelled": by_status.get("cancelled", 0),
        "awaiting_approval": by_status.get("awaiting_approval", 0),
        "rejected": by_status.get("rejected", 0),
        "skipped_unapproved": by_status.get("skipped_unapproved", 0),
        "over_budget": over_budget,
        "in_flight": sum(by_status.get(s, 0) for s in IN_FLIGHT),
        "by_trigger_kind": by_kind,
        "scheduled_runs": row.runs_total,
        "remaining_scheduled_runs": (
            None if row.max_runs is None else max(row.max_runs - row.runs_total, 0)
        ),
        "spent_usd": str(micros_to_usd(int(spent))),
    }
    return {
        **data,
        "pause": {
            "paused": not row.enabled,
            "note": row.pause_note,
            "by": row.paused_by,
            "at": format_utc_or_none(row.paused_at),
        },
        "counts": counts,
        "recent_actions": [_action(r) for r in recent],
        "running": [_action(r) for r in in_flight],
        "next_fire_times": next_fire_times(row, now),
    }
