"""Whose schedule a slot's event is on, and its last slots, for the asset's partition page.

The partition key is the schedule id, which tells a person nothing. So each slot event also
carries its schedule's owner, graph, timing and zone, and a markdown table of its last
slots (slot, status, reason, cost, run): the partition's latest event then answers "whose
is this, and how has it been doing" without leaving the asset page. All the schedules of
one tick of the slot events sensor are read in two statements (``recent_actions`` is one
per 200).
"""

from collections.abc import Collection, Mapping
from typing import Any

import dagster as dg
import sqlalchemy as sa

from graph_runs.core.cron import format_utc
from graph_runs.core.ledger_rows import slot_label
from graph_runs.core.money import micros_to_usd
from graph_runs.core.text import bounded
from graph_runs.scheduling.describe import recent_actions
from graph_runs.store.tables import schedules

LAST_SLOTS = 10
# A reason in the table is a hint; the slot's own event and describe have it whole.
REASON_IN_TABLE = 80


def _cell(text: object) -> str:
    # A pipe would end the cell; bounded() has already made newlines visible as \n.
    return (bounded(text, REASON_IN_TABLE) or "").replace("|", "\\|")


def _table(rows: list[Any]) -> str:
    lines = ["| slot | status | reason | cost USD | run |", "|---|---|---|---|---|"]
    for row in rows:
        slot = slot_label(row)
        cost = micros_to_usd(row.cost_micros)
        # A path on the webserver that shows the event: a link that works behind any host.
        run = (
            f"[{row.dagster_run_id[:8]}](/runs/{row.dagster_run_id})" if row.dagster_run_id else ""
        )
        reason = " ".join(filter(None, [row.error_code, row.error_message]))
        lines.append(
            f"| {slot} | {row.status} | {_cell(reason)} | {'' if cost is None else cost} | {run} |"
        )
    return "\n".join(lines)


def schedule_summaries(
    conn: sa.Connection, schedule_ids: Collection[str]
) -> dict[str, Mapping[str, Any]]:
    """Event metadata per schedule: owner, graph, cron or run_at, zone, and its last slots.

    Read after the slots were recorded, so the table includes the slot the event is about.
    A schedule deleted meanwhile has no entry: its event carries the slot alone.
    """
    if not schedule_ids:
        return {}
    found = conn.execute(
        sa.select(
            schedules.c.id,
            schedules.c.owner,
            schedules.c.graph_id,
            schedules.c.cron,
            schedules.c.run_at,
            schedules.c.timezone,
        ).where(schedules.c.id.in_(sorted(set(schedule_ids))))
    ).all()
    recent = recent_actions(conn, [row.id for row in found], LAST_SLOTS)
    return {
        row.id: {
            "owner": row.owner,
            "graph_id": row.graph_id,
            "timing": row.cron or (format_utc(row.run_at) if row.run_at else ""),
            "timezone": row.timezone,
            "last_slots": dg.MetadataValue.md(_table(recent.get(row.id, []))),
        }
        for row in found
    }
