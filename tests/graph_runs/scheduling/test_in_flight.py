"""graph_runs.scheduling.in_flight and the instant's decision, with slots claimed ahead.

Issue 21: a ``buffer_one`` slot waited behind the next minute's claimed-ahead row, and
that newer slot fired first (A2); a pause and resume inside the lookahead lost the slot
(A6); ``max_runs`` completed a run short (A7); an edit after the claim fired the old
slot (A9). Real claims (with the sensor's lookahead) into a real database
on each backend; each slot's instant is decided by ``decide_and_fire`` as its dispatch run
decides it, holding its batch's lease.
"""

import datetime as dt
from typing import Any

import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch import batches
from graph_runs.dispatch.firing import decide_and_fire
from graph_runs.scheduling.claim import TickLimits, claim_due_slots
from graph_runs.scheduling.in_flight import release_buffered
from graph_runs.scheduling.schedules import pause_schedule, resume_schedule, update_schedule
from graph_runs.store.tables import run_ledger, schedules
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


def schedule_row(conn: sa.Connection, schedule_id: str) -> Any:
    return conn.execute(sa.select(schedules).where(schedules.c.id == schedule_id)).one()


def test_pause_then_resume_before_the_instant_fires_the_claimed_slot_once(
    engine: sa.Engine,
) -> None:
    """Review defect A6: the claimed-ahead slot was lost, and runs_total counted twice.

    The pause cancelled the row, the resume set next_run_at back to its slot, and the claim
    that followed hit the unique key and skipped it silently.
    """
    with engine.begin() as conn:
        view = make_schedule(conn, CREATED, make_grant(conn, CREATED))
        claim_ahead(conn, "2026-11-22T10:00:30Z")
        pause_schedule(conn, view["id"], now=at("2026-11-22T10:00:40Z"), note="hold")
        resume_schedule(conn, view["id"], now=at("2026-11-22T10:00:50Z"), limits=ScheduleLimits())
        claim_ahead(conn, "2026-11-22T10:00:55Z")
        fire_at(conn, view["id"], "2026-11-22T10:01:00Z")
        assert ledger_statuses(conn, view["id"]) == [("2026-11-22T10:01:00Z", "running")]
        assert schedule_row(conn, view["id"]).runs_total == 1


def test_a_claimed_slot_whose_instant_passes_while_paused_is_recorded_paused(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        view = make_schedule(conn, CREATED, make_grant(conn, CREATED))
        claim_ahead(conn, "2026-11-22T10:00:30Z")
        pause_schedule(conn, view["id"], now=at("2026-11-22T10:00:40Z"), note="hold")
        resume_schedule(conn, view["id"], now=at("2026-11-22T10:01:30Z"), limits=ScheduleLimits())
        claim_ahead(conn, "2026-11-22T10:01:35Z")
        assert ledger_statuses(conn, view["id"]) == [
            ("2026-11-22T10:01:00Z", "skipped_paused"),
            ("2026-11-22T10:02:00Z", "pending"),
        ]
        assert schedule_row(conn, view["id"]).runs_total == 1


def test_an_edit_after_the_claim_fires_the_slot_as_edited(engine: sa.Engine) -> None:
    """Review defect A9: the claimed slot fired with the old input, grant and timing."""
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant)
        claim_ahead(conn, "2026-11-22T10:00:30Z")
        update_schedule(
            conn,
            view["id"],
            {"input": {"topic": "sports"}},
            limits=ScheduleLimits(),
            now=at("2026-11-22T10:00:40Z"),
        )
        claim_ahead(conn, "2026-11-22T10:00:45Z")
        fire_at(conn, view["id"], "2026-11-22T10:01:00Z")
        (row,) = conn.execute(sa.select(run_ledger)).all()
        assert (row.status, row.input) == ("running", {"topic": "sports"})
        assert schedule_row(conn, view["id"]).runs_total == 1


def test_a_retime_after_the_claim_does_not_fire_the_old_slot(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        view = make_schedule(conn, CREATED, make_grant(conn, CREATED))
        claim_ahead(conn, "2026-11-22T10:00:30Z")
        update_schedule(
            conn,
            view["id"],
            {"cron": "*/5 * * * *"},
            limits=ScheduleLimits(),
            now=at("2026-11-22T10:00:40Z"),
        )
        claim_ahead(conn, "2026-11-22T10:00:45Z")
        assert ledger_statuses(conn, view["id"]) == []
        row = schedule_row(conn, view["id"])
        assert (row.runs_total, row.next_run_at) == (0, at("2026-11-22T10:05:00Z"))


def test_max_runs_is_reached_by_runs_not_by_slots_held_at_their_instant(
    engine: sa.Engine,
) -> None:
    """Review defect A7: the schedule completed one run short.

    The claim counted the claimed-ahead slot as its last run and completed the schedule;
    at the instant overlap held it, the count went down, but the schedule stayed completed.
    """
    with engine.begin() as conn:
        view = make_schedule(conn, CREATED, make_grant(conn, CREATED), max_runs=2, overlap="skip")
        claim_ahead(conn, "2026-11-22T10:00:30Z")
        fire_at(conn, view["id"], "2026-11-22T10:01:00Z")  # run 1, and it runs long
        claim_ahead(conn, "2026-11-22T10:01:30Z")  # 10:02 would be run 2: completed
        assert schedule_row(conn, view["id"]).status == "completed"
        fire_at(conn, view["id"], "2026-11-22T10:02:00Z")  # skipped: 10:01 still runs
        set_run_status(conn, view["id"], "2026-11-22T10:01:00Z", "succeeded", "run-1")
        claim_ahead(conn, "2026-11-22T10:02:30Z")
        fire_at(conn, view["id"], "2026-11-22T10:03:00Z")  # run 2
        claim_ahead(conn, "2026-11-22T10:03:30Z")
        assert ledger_statuses(conn, view["id"]) == [
            ("2026-11-22T10:01:00Z", "succeeded"),
            ("2026-11-22T10:02:00Z", "skipped_overlap"),
            ("2026-11-22T10:03:00Z", "running"),
        ]
        row = schedule_row(conn, view["id"])
        assert (row.status, row.runs_total) == ("completed", 2)
