"""graph_runs.scheduling.in_flight and the instant's overlap decision, with slots claimed ahead.

Issue 21, A2: a ``buffer_one`` slot waited behind the next minute's claimed-ahead row, and
that newer slot fired first. Real claims (with the sensor's lookahead) into a real database
on each backend; each slot's instant is decided by ``decide_and_fire`` as its dispatch run
decides it, holding its batch's lease.
"""

import datetime as dt

import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch import batches
from graph_runs.dispatch.firing import decide_and_fire
from graph_runs.scheduling.claim import TickLimits, claim_due_slots
from graph_runs.scheduling.in_flight import release_buffered
from graph_runs.store.tables import run_ledger
from tests.helpers import at, ledger_statuses, make_grant, make_schedule, set_run_status

CREATED = at("2026-11-22T10:00:05Z")
LOOKAHEAD = TickLimits(lookahead=dt.timedelta(seconds=50))


def claim_ahead(conn: sa.Connection, now: str) -> None:
    """The sensor's tick: claim 50 s ahead, and batch what it claimed."""
    claim_due_slots(conn, now=at(now), schedule_limits=ScheduleLimits(), tick_limits=LOOKAHEAD)
    batches.form_batches(conn, now=at(now), horizon=at(now) + LOOKAHEAD.lookahead, batch_size=100)


def fire_at(conn: sa.Connection, schedule_id: str, slot: str) -> None:
    """The slot's dispatch run at its instant: take the lease, decide, fire."""
    row = conn.execute(
        sa.select(run_ledger).where(
            run_ledger.c.schedule_id == schedule_id, run_ledger.c.scheduled_for == at(slot)
        )
    ).one()
    run_id = f"run-{slot}"
    assert batches.take_lease(
        conn, row.batch_id, 1, dagster_run_id=run_id, now=at(slot), lease=dt.timedelta(seconds=60)
    )
    decide_and_fire(
        conn, [row.id], batch_id=row.batch_id, dagster_run_id=run_id, attempt=1, now=at(slot)
    )


def buffered_schedule(engine: sa.Engine) -> str:
    """10:01 is running long, 10:02 came due and was buffered, 10:03 is claimed ahead."""
    with engine.begin() as conn:
        view = make_schedule(conn, CREATED, make_grant(conn, CREATED), overlap="buffer_one")
        claim_ahead(conn, "2026-11-22T10:00:30Z")
        fire_at(conn, view["id"], "2026-11-22T10:01:00Z")
        claim_ahead(conn, "2026-11-22T10:01:30Z")
        fire_at(conn, view["id"], "2026-11-22T10:02:00Z")
        claim_ahead(conn, "2026-11-22T10:02:30Z")
        assert ledger_statuses(conn, view["id"]) == [
            ("2026-11-22T10:01:00Z", "running"),
            ("2026-11-22T10:02:00Z", "buffered"),
            ("2026-11-22T10:03:00Z", "pending"),
        ]
        # The long run ends.
        set_run_status(conn, view["id"], "2026-11-22T10:01:00Z", "succeeded", "run-1")
    return str(view["id"])


def test_a_buffered_slot_is_released_although_the_next_slot_is_claimed_ahead(
    engine: sa.Engine,
) -> None:
    schedule_id = buffered_schedule(engine)
    with engine.begin() as conn:
        (released,) = release_buffered(conn, at("2026-11-22T10:02:40Z"))
        claim_ahead(conn, "2026-11-22T10:02:40Z")  # the released slot gets a batch
        fire_at(conn, schedule_id, "2026-11-22T10:02:00Z")
        # At 10:03 the released slot is running: the newer one is buffered behind it.
        fire_at(conn, schedule_id, "2026-11-22T10:03:00Z")
        assert ledger_statuses(conn, schedule_id) == [
            ("2026-11-22T10:01:00Z", "succeeded"),
            ("2026-11-22T10:02:00Z", "running"),
            ("2026-11-22T10:03:00Z", "buffered"),
        ]
    assert released


def test_a_newer_slot_never_fires_before_the_slot_buffered_ahead_of_it(
    engine: sa.Engine,
) -> None:
    """No tick released the buffered slot before the next instant: the newer one waits."""
    schedule_id = buffered_schedule(engine)
    with engine.begin() as conn:
        fire_at(conn, schedule_id, "2026-11-22T10:03:00Z")
        statuses = dict(ledger_statuses(conn, schedule_id))
        assert statuses["2026-11-22T10:03:00Z"] == "skipped_overlap"
        assert statuses["2026-11-22T10:02:00Z"] == "buffered"
        assert release_buffered(conn, at("2026-11-22T10:03:05Z"))
