"""Every slot outcome as an event on its schedule's partition, announced from the ledger.

The ledger is the record; the events are what the Catalog shows of it. A move into an
outcome sets the row's ``announce_tick`` to 0 (``store/slot_status.py``), whoever made it:
the dispatch run, the sensor settling a slot that never fired (skipped, missed, cancelled)
or polling one to its end, a reconciliation of a lost run. The slot events sensor takes
those rows a tick at a time, so one path announces them all, and the dispatch run spends
nothing on events while it fires: logging each from the op cost a 1,000-slot burst 39% of
its rate (docs/benchmarks.md).

A tick numbered ``n + 1`` (``n``, the last tick Dagster committed, is the sensor's cursor)
clears the marks of tick ``n``, takes the rows still marked 0 and any marked by a tick whose
result Dagster never committed, and marks them ``n + 1``, in one transaction. So an
outcome is announced at least once: a tick whose events were written but whose cursor was
not is announced again, the same outcome twice on one partition, never none.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import sqlalchemy as sa

from graph_runs.core.ledger_rows import slot_label
from graph_runs.core.money import micros_to_usd
from graph_runs.core.statuses import SUCCEEDED
from graph_runs.core.text import bounded
from graph_runs.jobs.partitions import SLOT_ASSET_KEY
from graph_runs.jobs.slot_summary import schedule_summaries
from graph_runs.scheduling.describe import WITH_COST
from graph_runs.store import slot_status
from graph_runs.store.tables import charge_receipts, run_ledger

MAX_REASON = 500

SlotEvent = dg.AssetMaterialization | dg.AssetObservation


@dataclass(frozen=True)
class Announcement:
    """What one tick took from the ledger: its number and the rows it marked."""

    tick: int
    rows: Sequence[Any]


def last_tick(cursor: str | None) -> int:
    """The last committed tick the cursor names; 0 (none) for a missing or unreadable one.

    With 0, rows marked by any earlier tick count as uncommitted and are announced again:
    a reset cursor repeats at most one tick's events and loses none.
    """
    try:
        return max(int(cursor or "0"), 0)
    except ValueError:
        return 0


def take(conn: sa.Connection, last: int, limit: int) -> Announcement:
    """Clear tick ``last``'s marks, and mark the next ``limit`` rows to announce."""
    tick = last + 1
    slot_status.clear_announced(conn, last)
    query = (
        WITH_COST.add_columns(charge_receipts.c.total_tokens)
        # Left marked: 0, or by a tick after the last committed one, whose result was lost.
        .where(run_ledger.c.announce_tick.is_not(None))
        .order_by(run_ledger.c.created_at, run_ledger.c.id)
        .limit(limit)
        # A row a writer holds is moving again: its next outcome is announced next tick.
        .with_for_update(of=run_ledger, skip_locked=True)
    )
    rows = conn.execute(query).all()
    slot_status.mark_announced(conn, [row.id for row in rows], tick)
    return Announcement(tick, rows)


def _metadata(row: Any) -> dict[str, Any]:
    cost = micros_to_usd(row.cost_micros)
    metadata: dict[str, Any] = {
        "slot": slot_label(row),
        "status": row.status,
        # A decimal string, as the CLI prints it: a float would round a cost.
        "cost_usd": "0" if cost is None else str(cost),
        "tokens": row.total_tokens or 0,
        "api_run_id": row.api_run_id or "",
        "ledger_id": row.id,
        "trigger": row.trigger_kind,
        "attempt": row.dispatch_attempts,
        "error": row.error_code or "",
        "reason": bounded(row.error_message or "", MAX_REASON),
        "over_budget": bool(row.over_budget),
    }
    if row.dagster_run_id:
        # The run that fired it, a link in the UI: the Runs page cannot find a slot's run
        # by partition when a batch fired many schedules' slots.
        metadata["run"] = dg.MetadataValue.dagster_run(row.dagster_run_id)
    return metadata


def summaries_of(conn: sa.Connection, rows: Sequence[Any]) -> dict[str, Mapping[str, Any]]:
    """The summaries of the rows' schedules (``slot_summary``).

    Read after their outcomes, so that each outcome is in its schedule's table.
    """
    return schedule_summaries(conn, {row.schedule_id for row in rows if row.schedule_id})


def slot_events(rows: Sequence[Any], summaries: Mapping[str, Mapping[str, Any]]) -> list[SlotEvent]:
    """One event per row of a schedule, oldest first, so a partition's latest is its last.

    A success is a materialization, any other outcome an observation; each carries its
    schedule's summary if there is one. Rows of no schedule (ad-hoc runs) have no
    partition and no event.
    """
    # By slot: a resume records its paused slots in one instant, newest first.
    scheduled = sorted(
        (row for row in rows if row.schedule_id),
        key=lambda r: (r.scheduled_for or r.created_at, r.created_at, r.id),
    )
    events: list[SlotEvent] = []
    for row in scheduled:
        metadata = {**summaries.get(row.schedule_id, {}), **_metadata(row)}
        kind = dg.AssetMaterialization if row.status == SUCCEEDED else dg.AssetObservation
        events.append(kind(asset_key=SLOT_ASSET_KEY, partition=row.schedule_id, metadata=metadata))
    return events
