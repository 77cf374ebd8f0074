"""graph_runs.scheduling.triggers: trigger now and backfill write a ledger row once per slot.

Real SQLite and PostgreSQL databases; the sensor (tested elsewhere) turns these rows into
Dagster runs like any scheduled slot. A trigger revalidates the row as the sensor would.
"""

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from graph_runs.core.errors import InvalidInput, NotFound
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.scheduling.in_flight import release_buffered
from graph_runs.scheduling.schedules import delete_schedule, pause_schedule, resume_schedule
from graph_runs.scheduling.triggers import backfill_schedule, trigger_schedule
from graph_runs.store.tables import run_ledger, schedules
from tests.helpers import (
    at,
    claim_at,
    ledger_statuses,
    make_grant,
    make_schedule,
    waiting_on_a_lock,
)

CREATED = at("2026-11-20T00:00:30Z")
NOW = at("2026-11-22T12:00:00Z")


def backfill(conn: sa.Connection, schedule_id: str, start: str, end: str, **kw: str) -> dict:
    return backfill_schedule(
        conn, schedule_id, start=at(start), end=at(end), now=NOW, limits=ScheduleLimits(), **kw
    )


def test_trigger_runs_once_per_request_key_even_when_paused(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="0 9 * * *")
        pause_schedule(conn, view["id"], now=CREATED, note="quiet")
        first = trigger_schedule(conn, view["id"], now=NOW, requested_by="ana", request_key="k1")
        again = trigger_schedule(conn, view["id"], now=NOW, requested_by="ana", request_key="k1")
        other = trigger_schedule(conn, view["id"], now=NOW)
        assert first["created"] and not again["created"]
        assert first["ledger_id"] == again["ledger_id"] != other["ledger_id"]
        assert first["idempotency_key"] == f"manual:{view['id']}:k1"
        row = conn.execute(sa.select(run_ledger).where(run_ledger.c.id == first["ledger_id"])).one()
        assert (row.trigger_kind, row.requested_by, row.status) == ("manual", "ana", "pending")
        assert row.billing_account == "alice-billing" and row.scheduled_for is None
        # Trigger-now does not count towards max_runs: runs_total counts scheduled fires.
        assert conn.execute(sa.text("SELECT runs_total FROM schedules")).scalar_one() == 0


def test_trigger_under_skip_overlap_is_skipped_while_a_run_is_going(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="0 9 * * *")
        trigger_schedule(conn, view["id"], now=NOW)
        skipped = trigger_schedule(conn, view["id"], now=NOW, overlap="skip")
        assert skipped["status"] == "skipped_overlap"
        with pytest.raises(InvalidInput, match="overlap: 'never' is not one of"):
            trigger_schedule(conn, view["id"], now=NOW, overlap="never")


def test_backfill_runs_each_slot_once_and_reports_what_already_ran(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="0 9 * * *")
        claim_at(conn, at("2026-11-20T09:00:05Z"))  # 11-20 fired on schedule
        claim_at(conn, at("2026-11-21T11:30:00Z"))  # 11-21 was missed (beyond 1 h)
        report = backfill(conn, view["id"], "2026-11-19T00:00:00Z", "2026-11-22T10:00:00Z")
        assert (report["slots"], report["ran"], report["already"]) == (4, 3, 1)
        assert ledger_statuses(conn, view["id"]) == [
            ("2026-11-19T09:00:00Z", "pending"),
            ("2026-11-20T09:00:00Z", "pending"),
            ("2026-11-21T09:00:00Z", "pending"),
            ("2026-11-22T09:00:00Z", "pending"),
        ]
        kinds = dict(
            conn.execute(
                sa.select(run_ledger.c.scheduled_for, run_ledger.c.trigger_kind).where(
                    run_ledger.c.schedule_id == view["id"]
                )
            ).all()
        )
        assert kinds[at("2026-11-20T09:00:00Z")] == "scheduled"
        assert kinds[at("2026-11-21T09:00:00Z")] == "backfill"  # the missed slot, revived
        again = backfill(conn, view["id"], "2026-11-19T00:00:00Z", "2026-11-22T10:00:00Z")
        assert (again["ran"], again["already"]) == (0, 4)
        assert conn.execute(sa.select(sa.func.count()).select_from(run_ledger)).scalar_one() == 4


def test_backfill_with_skip_overlap_runs_the_first_slot_only(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="0 9 * * *")
        report = backfill(
            conn, view["id"], "2026-11-19T00:00:00Z", "2026-11-21T10:00:00Z", overlap="skip"
        )
        assert (report["ran"], report["skipped_overlap"]) == (1, 2)


def test_backfill_refuses_the_future_huge_ranges_and_unknown_schedules(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="* * * * *")
        with pytest.raises(InvalidInput, match="to: .* is in the future"):
            backfill(conn, view["id"], "2026-11-22T11:00:00Z", "2026-11-22T13:00:00Z")
        with pytest.raises(InvalidInput, match="from: the range holds more than 1000 slots"):
            backfill(conn, view["id"], "2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z")
        with pytest.raises(InvalidInput, match="to: is before from"):
            backfill(conn, view["id"], "2026-11-22T00:00:00Z", "2026-11-21T00:00:00Z")
        delete_schedule(conn, view["id"], now=NOW)
        with pytest.raises(NotFound):
            backfill(conn, view["id"], "2026-11-21T00:00:00Z", "2026-11-21T00:10:00Z")
        with pytest.raises(NotFound):
            trigger_schedule(conn, view["id"], now=NOW)
        assert conn.execute(sa.select(sa.func.count()).select_from(run_ledger)).scalar_one() == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [({"graph_id": ".."}, "graph_id"), ({"timezone": "America"}, "timezone")],
)
def test_trigger_now_revalidates_the_row_even_one_marked_error(
    engine: sa.Engine, change: dict[str, str], field: str
) -> None:
    with engine.begin() as conn:
        view = make_schedule(conn, CREATED, make_grant(conn, CREATED), cron="0 9 * * *")
        # Another application rewrites the row; the sensor has already marked it error.
        conn.execute(
            schedules.update()
            .where(schedules.c.id == view["id"])
            .values(status="error", last_error="bad row", **change)
        )
    with pytest.raises(InvalidInput) as caught, engine.begin() as conn:
        trigger_schedule(conn, view["id"], now=NOW, request_key="k1")
    assert caught.value.field == field
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(run_ledger)).scalar() == 0


@pytest.mark.parametrize(
    ("fields", "expected_status"),
    [
        ({"overlap": "allow_all"}, "active"),
        # Review defect: the claim cancelled its own slot, which the backfill had written.
        ({"overlap": "cancel_other"}, "active"),
        # Review defect: the schedule completed on a backfill row, documented not to count.
        ({"overlap": "allow_all", "max_runs": 2}, "completed"),
    ],
)
def test_a_backfill_of_a_due_slot_not_yet_claimed_leaves_the_claim_consistent(
    engine: sa.Engine, fields: dict, expected_status: str
) -> None:
    """The slot is due, the sensor has not ticked since; a backfill takes it, then the tick.

    Review defect: the claim's insert of that slot was ignored (the backfill's row was there),
    yet the claim counted it in ``runs_total``, cancelled it, or completed the schedule on it.
    """
    due = at("2026-11-22T09:00:10Z")
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="0 9 * * *", **fields)
        claim_at(conn, at("2026-11-21T09:00:05Z"))  # 11-21 fires on schedule
        report = backfill_schedule(
            conn,
            view["id"],
            start=at("2026-11-22T08:00:00Z"),
            end=due,
            now=due,
            limits=ScheduleLimits(),
        )
        claim_at(conn, at("2026-11-22T09:00:20Z"))  # the sensor's tick, right after
        (row,) = conn.execute(
            sa.select(run_ledger).where(run_ledger.c.scheduled_for == at("2026-11-22T09:00:00Z"))
        ).all()
        schedule = conn.execute(sa.select(schedules)).one()
        fired_on_schedule = conn.execute(
            sa.select(sa.func.count())
            .select_from(run_ledger)
            .where(run_ledger.c.trigger_kind == "scheduled", run_ledger.c.status != "missed")
        ).scalar_one()
    # The slot is the schedule's own, fired once, and counted once; nothing cancelled it.
    assert (row.trigger_kind, row.status) == ("scheduled", "pending")
    assert report["detail"] == [
        {"slot": "2026-11-22T09:00:00Z", "status": "pending", "already": True}
    ]
    assert schedule.runs_total == fired_on_schedule == 2
    assert schedule.status == expected_status


def test_a_paused_schedule_keeps_its_backfilled_slots_on_resume(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="0 9 * * *")
        claim_at(conn, at("2026-11-21T09:00:05Z"))
        pause_schedule(conn, view["id"], now=at("2026-11-21T10:00:00Z"), note="holiday")
        report = backfill(conn, view["id"], "2026-11-22T08:00:00Z", "2026-11-22T10:00:00Z")
        resume_schedule(conn, view["id"], now=NOW, limits=ScheduleLimits())
        assert report["ran"] == 1
        assert ledger_statuses(conn, view["id"])[-1] == ("2026-11-22T09:00:00Z", "pending")
        assert conn.execute(sa.select(schedules.c.runs_total)).scalar_one() == 1


def _in_thread(engine: sa.Engine, work: Callable[[sa.Connection], Any]) -> tuple[Any, dict]:
    """Run ``work`` in its own transaction on a thread; return it and its result slot."""
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            with engine.begin() as conn:
                done["pid"] = conn.connection.dbapi_connection.get_backend_pid()  # type: ignore[union-attr]
                done["result"] = work(conn)
        except Exception as exc:  # noqa: BLE001 - reported by the caller's assertion
            done["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    for _ in range(500):  # at most about 10 s
        if "error" in done or ("pid" in done and waiting_on_a_lock(engine, done["pid"])):
            break
        time.sleep(0.02)
    return thread, done


@pytest.mark.parametrize("holder", ["claim", "release"])
def test_a_trigger_waits_for_a_concurrent_claim_or_release_of_its_schedule(
    engine: sa.Engine, holder: str
) -> None:
    """Review defect: a trigger read the runs in flight without locking the schedule row.

    Next to a claim (or a release of a buffered slot) not yet committed it saw nothing in
    flight, and ``skip`` (or ``buffer_one``) let two runs go at once.
    """
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers: there are no row locks to order")
    policy = "skip" if holder == "claim" else "buffer_one"
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="0 9 * * *", overlap=policy)
        claim_at(conn, at("2026-11-21T09:00:05Z"))
        if holder == "release":
            # The 11-21 run went on into 11-22, whose slot was buffered...
            claim_at(conn, at("2026-11-22T09:00:05Z"))
        # ...and it has ended.
        conn.execute(
            run_ledger.update()
            .where(run_ledger.c.scheduled_for == at("2026-11-21T09:00:00Z"))
            .values(status="succeeded")
        )
        if holder == "release":
            assert ledger_statuses(conn, view["id"])[-1][1] == "buffered"
    with engine.connect() as conn, conn.begin():
        if holder == "claim":
            claim_at(conn, at("2026-11-22T09:00:05Z"))
        else:
            assert release_buffered(conn, NOW)
        thread, done = _in_thread(
            engine, lambda c: trigger_schedule(c, view["id"], now=NOW, overlap=policy)
        )
        assert "error" not in done, done
    thread.join(timeout=30)
    assert not thread.is_alive() and "error" not in done, done
    expected = "skipped_overlap" if policy == "skip" else "buffered"
    assert done["result"]["status"] == expected
