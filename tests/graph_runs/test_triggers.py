"""graph_runs.triggers: trigger now and backfill write ledger rows once per slot or request.

Real SQLite and PostgreSQL databases; the sensor (tested elsewhere) turns these rows into
Dagster runs like any scheduled slot. A trigger revalidates the row as the sensor would.
"""

import pytest
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.errors import InvalidInput, NotFound
from graph_runs.schedules import delete_schedule, pause_schedule
from graph_runs.tables import run_ledger, schedules
from graph_runs.triggers import backfill_schedule, trigger_schedule
from tests.helpers import at, claim_at, ledger_statuses, make_grant, make_schedule

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
