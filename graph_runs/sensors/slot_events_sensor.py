"""The sensor that shows every slot outcome on its schedule's partition, at least once.

Each tick is a function of its cursor (the last tick Dagster committed) and the ledger:
it takes up to ``max_per_tick`` outcomes not yet announced, whoever recorded them, and
returns one asset event for each (``graph_runs.jobs.slot_events``). Dagster writes them as
the daemon's, not as the dispatch run's: the run that fired a slot is the event's ``run``
link, and the dispatch run spends none of its time on events. The schedules whose latest
outcome is not a success are judged by ``last_slot_ok`` in a run the tick asks for
(``graph_runs.jobs.last_slot_check``): that is what reads as failed in the Catalog.
"""

from collections.abc import Mapping
from typing import Any

import dagster as dg
import sqlalchemy as sa

from graph_runs.jobs import last_slot_check, slot_events
from graph_runs.jobs.last_slot_check import LAST_SLOT_CHECK, last_slot_checks_job
from graph_runs.jobs.slot_events import Announcement
from graph_runs.resources import DatabaseResource, DispatchResource
from graph_runs.settings import SLOT_ASSET_EVENTS_VAR
from graph_runs.store.db import SchemaError, reading

# The daemon writes a tick's events one by one (a few ms each on SQLite): a 10,000-slot
# burst is announced within five ticks, each well inside the evaluation's time limit.
MAX_EVENTS_PER_TICK = 2_000


def _read_after(
    context: dg.SensorEvaluationContext, database: DatabaseResource, taken: Announcement
) -> tuple[dict[str, Mapping[str, Any]], dict[str, Any]]:
    """The schedules' summaries and latest outcomes, read after the outcomes taken."""
    # Read apart from the marking: on SQLite its transaction holds the one write lock, which
    # the dispatch runs need to record outcomes.
    try:
        with reading(database.engine()) as conn:
            summaries = slot_events.summaries_of(conn, taken.rows)
            ids = {row.schedule_id for row in taken.rows if row.schedule_id}
            return summaries, last_slot_check.latest_outcomes(conn, ids)
    except sa.exc.SQLAlchemyError as exc:
        # The rows are marked: their events go out with the slots alone, and the schedules
        # are judged by what was taken.
        context.log.warning(f"slot events without their schedules' summaries: {exc!r:.200}")
        return {}, {}


def slot_events_tick(
    context: dg.SensorEvaluationContext,
    database: DatabaseResource,
    dispatch: DispatchResource,
    max_per_tick: int,
) -> dg.SensorResult | dg.SkipReason:
    """One tick: the outcomes to announce, their events, and the tick as the new cursor."""
    try:
        database.check_schema()
    except SchemaError as exc:
        return dg.SkipReason(f"not announcing slot outcomes: {exc}")
    last = slot_events.last_tick(context.cursor)
    announcing = dispatch.slot_asset_events
    try:
        with database.transaction() as conn:
            taken = slot_events.take(conn, last, max_per_tick)
    except sa.exc.SQLAlchemyError as exc:
        # Nothing was marked: the same outcomes are taken again next tick.
        context.log.warning(f"slot outcomes not announced this tick: {exc!r:.300}")
        return dg.SkipReason(
            f"the ledger could not be read; retrying next tick ({type(exc).__name__})"
        )
    if not taken.rows:
        # The cursor stays: the next tick is this one's number again, with nothing to redo.
        return dg.SkipReason(f"no slot outcome to announce since tick {last}")
    if not announcing:
        return dg.SensorResult(
            skip_reason=f"{len(taken.rows)} outcome(s) passed over: slot events are off "
            f"({SLOT_ASSET_EVENTS_VAR}=false)",
            cursor=str(taken.tick),
        )
    summaries, latest = _read_after(context, database, taken)
    events = slot_events.slot_events(taken.rows, summaries)
    if not events:
        return dg.SensorResult(
            skip_reason=f"{len(taken.rows)} outcome(s) passed over: no schedule's among them",
            cursor=str(taken.tick),
        )
    to_judge = last_slot_check.needs_judging(latest, taken.rows)
    context.log.info(
        f"tick {taken.tick}: announcing {len(events)} slot outcome(s) on "
        f"{len({e.partition for e in events})} schedule partition(s); "
        f"{len(to_judge)} schedule(s) to judge by {LAST_SLOT_CHECK}"
    )
    return dg.SensorResult(
        asset_events=events,
        run_requests=[last_slot_check.run_request(to_judge, taken.tick)] if to_judge else [],
        cursor=str(taken.tick),
    )


def make_slot_events_sensor(
    minimum_interval_seconds: int, max_per_tick: int = MAX_EVENTS_PER_TICK
) -> dg.SensorDefinition:
    """The sensor, on the schedules sensor's interval."""

    @dg.sensor(
        name="slot_events_sensor",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=[last_slot_checks_job],
        description=(
            "Announces each slot outcome in the run ledger (succeeded, failed, skipped, "
            "missed, cancelled, rejected) as an event on its schedule's partition of "
            "scheduled_graph_runs, with its cost, reason and the run that fired it, and asks "
            "for a last_slot_checks run for the schedules whose latest outcome is not a "
            "success."
        ),
    )
    def slot_events_sensor(
        context: dg.SensorEvaluationContext,
        database: DatabaseResource,
        dispatch: DispatchResource,
    ) -> dg.SensorResult | dg.SkipReason:
        return slot_events_tick(context, database, dispatch, max_per_tick)

    return slot_events_sensor
