"""The database half of a sensor tick, in one transaction: release, claim, batch.

The sensor (``graph_runs.sensors.graph_schedules_sensor``) and the fault simulator
(``tests/simulation``) both run a tick through this function, so the simulator exercises
the sensor's own order of steps rather than a copy of it.
"""

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch.batches import Batch, form_batches
from graph_runs.scheduling.claim import ClaimResult, TickLimits, claim_due_slots
from graph_runs.scheduling.in_flight import release_buffered


@dataclass(frozen=True)
class Claimed:
    """What one tick wrote: buffered slots released, the claim, and the batches formed."""

    released: list[str]
    claim: ClaimResult
    formed: list[Batch]


def claim_and_batch(
    conn: sa.Connection,
    *,
    now: dt.datetime,
    schedule_limits: ScheduleLimits,
    tick_limits: TickLimits,
    batch_size: int,
    parallel_runs: int,
    account_batches: int = 0,
) -> Claimed:
    """Release buffered slots, claim what is due within the lookahead, batch it; in ``conn``."""
    released = release_buffered(conn, now)
    claim = claim_due_slots(conn, now=now, schedule_limits=schedule_limits, tick_limits=tick_limits)
    formed = form_batches(
        conn,
        now=now,
        horizon=now + tick_limits.lookahead,
        batch_size=batch_size,
        parallel_runs=parallel_runs,
        account_batches=account_batches,
    )
    return Claimed(released, claim, formed)
