"""graph_runs.scheduling.claim: which slots a tick claims, at exact instants, on both backends.

No Dagster here: the claim is the database half of the sensor tick.
"""

from typing import Any

import pytest
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.scheduling.claim import ClaimResult, TickLimits, claim_due_slots
from graph_runs.scheduling.schedules import delete_schedule
from graph_runs.store.tables import run_ledger, schedules
from tests.helpers import at, make_grant, make_schedule

CREATED = at("2026-11-22T10:00:30Z")


def claim(engine: sa.Engine, now: str, **limits: Any) -> ClaimResult:
    with engine.begin() as conn:
        return claim_due_slots(
            conn, now=at(now), schedule_limits=ScheduleLimits(), tick_limits=TickLimits(**limits)
        )


def ledger(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(run_ledger.c.scheduled_for, run_ledger.c.status).order_by(
                run_ledger.c.scheduled_for
            )
        )
        return [(r.scheduled_for.strftime("%Y-%m-%dT%H:%M:%SZ"), r.status) for r in rows]


def schedule_row(engine: sa.Engine, schedule_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(schedules).where(schedules.c.id == schedule_id)).one()


def pending_rows(conn: sa.Connection) -> list[Any]:
    return list(conn.execute(sa.select(run_ledger).where(run_ledger.c.status == "pending")))


def setup_schedule(engine: sa.Engine, created: str | None = None, **fields: Any) -> dict[str, Any]:
    when = CREATED if created is None else at(created)
    with engine.begin() as conn:
        grant = make_grant(conn, when)
        return make_schedule(conn, when, grant, **fields)


def test_due_slot_is_claimed_once_and_next_run_at_advances(engine: sa.Engine) -> None:
    view = setup_schedule(engine)
    assert claim(engine, "2026-11-22T10:00:59Z").fired == 0
    first = claim(engine, "2026-11-22T10:01:05Z")
    assert (first.fired, first.missed) == (1, 0)
    again = claim(engine, "2026-11-22T10:01:05Z")
    assert (again.fired, again.schedules_seen) == (0, 0)
    assert ledger(engine) == [("2026-11-22T10:01:00Z", "pending")]
    row = schedule_row(engine, view["id"])
    assert row.next_run_at == at("2026-11-22T10:02:00Z")
    assert (row.runs_total, row.last_run_at) == (1, at("2026-11-22T10:01:00Z"))
    with engine.connect() as conn:
        (pending,) = pending_rows(conn)
    assert pending.idempotency_key == f"sched:{view['id']}:2026-11-22T10:01:00Z"
    assert pending.billing_account == "alice-billing"


def test_a_day_of_downtime_fires_the_latest_slot_and_records_the_rest_missed(
    engine: sa.Engine,
) -> None:
    setup_schedule(engine, cron="0 * * * *")
    result = claim(engine, "2026-11-23T10:20:00Z")
    assert (result.fired, result.missed) == (1, 23)
    rows = ledger(engine)
    assert rows[0] == ("2026-11-22T11:00:00Z", "missed")
    assert rows[-2] == ("2026-11-23T09:00:00Z", "missed")
    assert rows[-1] == ("2026-11-23T10:00:00Z", "pending")
    assert len(rows) == 24


def test_slots_older_than_the_catchup_window_are_all_missed(engine: sa.Engine) -> None:
    view = setup_schedule(engine, cron="0 9 * * *")
    result = claim(engine, "2026-11-23T10:30:00Z")
    assert (result.fired, result.missed) == (0, 1)
    assert ledger(engine) == [("2026-11-23T09:00:00Z", "missed")]
    assert schedule_row(engine, view["id"]).next_run_at == at("2026-11-24T09:00:00Z")


def test_long_downtime_is_worked_through_in_bounded_ticks(engine: sa.Engine) -> None:
    setup_schedule(engine)
    first = claim(engine, "2026-11-22T10:30:10Z", max_slots_per_schedule=10)
    assert (first.fired, first.missed) == (0, 10)
    for _ in range(2):
        claim(engine, "2026-11-22T10:30:10Z", max_slots_per_schedule=10)
    rows = ledger(engine)
    assert len(rows) == 30 and rows[-1] == ("2026-11-22T10:30:00Z", "pending")
    assert {status for _, status in rows[:-1]} == {"missed"}


def test_fall_back_day_fires_a_fixed_time_once(engine: sa.Engine) -> None:
    view = setup_schedule(
        engine, created="2026-10-31T12:00:00Z", cron="30 1 * * *", timezone="America/New_York"
    )
    assert schedule_row(engine, view["id"]).next_run_at == at("2026-11-01T05:30:00Z")
    claim(engine, "2026-11-01T05:30:05Z")
    claim(engine, "2026-11-01T06:30:05Z")
    assert ledger(engine) == [("2026-11-01T05:30:00Z", "pending")]


def test_spring_forward_day_fires_a_missing_time_when_the_gap_ends(engine: sa.Engine) -> None:
    view = setup_schedule(
        engine,
        created="2026-03-06T12:00:00Z",
        cron="30 2 * * *",
        timezone="America/New_York",
        overlap="allow_all",
    )
    claim(engine, "2026-03-07T07:30:01Z")
    assert schedule_row(engine, view["id"]).next_run_at == at("2026-03-08T07:00:00Z")
    claim(engine, "2026-03-08T07:00:01Z")
    assert ledger(engine) == [
        ("2026-03-07T07:30:00Z", "pending"),
        ("2026-03-08T07:00:00Z", "pending"),
    ]


def test_one_time_schedule_fires_once_then_completes(engine: sa.Engine) -> None:
    view = setup_schedule(engine, cron=None, run_at=at("2026-11-22T12:00:00Z"))
    assert claim(engine, "2026-11-22T11:59:59Z").fired == 0
    result = claim(engine, "2026-11-22T12:00:02Z")
    assert result.completed == [view["id"]]
    assert claim(engine, "2026-11-22T12:05:00Z").schedules_seen == 0
    row = schedule_row(engine, view["id"])
    assert (row.status, row.next_run_at, row.runs_total) == ("completed", None, 1)


def test_paused_schedules_are_not_claimed(engine: sa.Engine) -> None:
    view = setup_schedule(engine)
    with engine.begin() as conn:
        conn.execute(schedules.update().where(schedules.c.id == view["id"]).values(enabled=False))
    assert claim(engine, "2026-11-22T10:05:00Z").schedules_seen == 0
    assert ledger(engine) == []


def insert_raw(engine: sa.Engine, grant_id: str, **values: Any) -> str:
    """A row as another application might write it: straight into the table."""
    row = {
        "id": values.pop("id"),
        "owner": "alice",
        "graph_id": "echo",
        "input": {},
        "cron": "*/5 * * * *",
        "timezone": "UTC",
        "grant_id": grant_id,
        "created_at": CREATED,
        "updated_at": CREATED,
    }
    row.update(values)
    with engine.begin() as conn:
        conn.execute(schedules.insert().values(**row))
    return str(row["id"])


def test_rows_written_by_another_app_fire_and_invalid_ones_are_marked_error(
    engine: sa.Engine,
) -> None:
    view = setup_schedule(engine)
    grant_id = view["grant_id"]
    no_next = insert_raw(engine, grant_id, id="sch_no_next_run_at")
    stale = insert_raw(engine, grant_id, id="sch_stale", next_run_at=at("2026-11-22T10:03:17Z"))
    bad_cron = insert_raw(engine, grant_id, id="sch_bad_cron", cron="every day")
    bad_zone = insert_raw(engine, grant_id, id="sch_bad_zone", timezone="Moon/Base")
    bad_input = insert_raw(engine, grant_id, id="sch_bad_input", input=[1, 2])
    result = claim(engine, "2026-11-22T10:05:10Z")
    assert sorted(sid for sid, _ in result.invalid) == sorted([bad_cron, bad_zone, bad_input])
    for sid, fragment in [(bad_cron, "cron:"), (bad_zone, "timezone:"), (bad_input, "input:")]:
        row = schedule_row(engine, sid)
        assert row.status == "error" and row.last_error.startswith(fragment)
    with engine.connect() as conn:
        fired = dict(
            conn.execute(
                sa.select(run_ledger.c.schedule_id, run_ledger.c.scheduled_for).where(
                    run_ledger.c.status == "pending"
                )
            ).all()
        )
    assert fired == {
        view["id"]: at("2026-11-22T10:05:00Z"),
        no_next: at("2026-11-22T10:05:00Z"),
        stale: at("2026-11-22T10:05:00Z"),
    }
    assert schedule_row(engine, no_next).next_run_at == at("2026-11-22T10:10:00Z")
    # A broken row stays broken, quietly: the next tick does not see it again.
    assert claim(engine, "2026-11-22T10:10:10Z").invalid == []


def test_a_row_inserted_without_next_run_at_before_its_first_slot_gets_one(
    engine: sa.Engine,
) -> None:
    view = setup_schedule(engine)
    sid = insert_raw(engine, view["grant_id"], id="sch_early", cron="0 12 * * *")
    claim(engine, "2026-11-22T10:00:40Z")
    assert schedule_row(engine, sid).next_run_at == at("2026-11-22T12:00:00Z")
    assert claim(engine, "2026-11-22T10:00:45Z").schedules_seen == 0


def test_claims_are_bounded_per_tick(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        for _ in range(5):
            make_schedule(conn, CREATED, grant)
    first = claim(engine, "2026-11-22T10:01:01Z", max_schedules=3)
    assert (first.fired, first.more_due) == (3, True)
    second = claim(engine, "2026-11-22T10:01:02Z", max_schedules=3)
    assert (second.fired, second.more_due) == (2, False)


def test_now_is_exact_to_the_slot(engine: sa.Engine) -> None:
    setup_schedule(engine)
    assert claim(engine, "2026-11-22T10:01:00Z").fired == 1
    assert ledger(engine) == [("2026-11-22T10:01:00Z", "pending")]


def test_deleting_a_schedule_cancels_its_slots_not_yet_handed_to_dagster(
    engine: sa.Engine,
) -> None:
    view = setup_schedule(engine)
    claim(engine, "2026-11-22T10:01:01Z")
    with engine.begin() as conn:
        delete_schedule(conn, view["id"], now=at("2026-11-22T10:01:02Z"))
        assert pending_rows(conn) == []
    assert ledger(engine) == [("2026-11-22T10:01:00Z", "cancelled")]


HOSTILE: dict[str, dict[str, Any]] = {
    "a folder of the zone database": {"timezone": "America"},
    "an over-long zone": {"timezone": "Europe/" + "x" * 56},
    "a zone path": {"timezone": "../../etc/passwd"},
    "run_at in year 9999": {"cron": None, "run_at": at("9999-12-31T23:59:00Z")},
    "start_at in year 1": {"start_at": at("0001-01-01T00:00:00Z"), "catchup": "all"},
    "a largest max_runs": {"max_runs": 2**31 - 1},
    "a largest pause_after_failures": {"pause_after_failures": 2**31 - 1},
    "a largest catch-up window": {"catchup_window_seconds": 2**31 - 1, "catchup": "all"},
    "a largest jitter": {"jitter_seconds": 2**31 - 1},
}


def test_no_content_of_one_row_stops_the_claim_of_the_others(engine: sa.Engine) -> None:
    view = setup_schedule(engine)
    ids = {
        name: insert_raw(engine, view["grant_id"], id=f"sch_hostile_{i}", **values)
        for i, (name, values) in enumerate(sorted(HOSTILE.items()))
    }
    result = claim(engine, "2026-11-22T10:05:10Z")
    invalid = dict(result.invalid)
    for name, schedule_id in ids.items():
        row = schedule_row(engine, schedule_id)
        # Either planned as any row is, or marked error with a readable, bounded reason.
        assert row.status in ("active", "error"), name
        if row.status == "error":
            assert invalid[schedule_id] and len(row.last_error) <= 2000, name
            assert "\n" not in row.last_error, name
    assert "zone" in invalid[ids["a folder of the zone database"]]
    with engine.connect() as conn:
        fired = conn.execute(
            sa.select(run_ledger.c.scheduled_for).where(run_ledger.c.schedule_id == view["id"])
        ).scalars()
        assert at("2026-11-22T10:05:00Z") in list(fired)


def test_input_nested_15000_deep_marks_its_row_error_and_the_others_fire(
    engine: sa.Engine,
) -> None:
    if engine.dialect.name == "postgresql":
        pytest.skip("Postgres refuses to store JSON nested this deep: no such row exists there")
    view = setup_schedule(engine)
    deep = insert_raw(engine, view["grant_id"], id="sch_deep")
    with engine.begin() as conn:  # as another application's driver would write it
        conn.execute(
            sa.text("UPDATE schedules SET input = :deep WHERE id = 'sch_deep'"),
            {"deep": "[" * 15_000 + "]" * 15_000},
        )
    result = claim(engine, "2026-11-22T10:05:10Z")
    assert [sid for sid, _ in result.invalid] == [deep]
    assert schedule_row(engine, view["id"]).status == "active"
    with engine.connect() as conn:
        status = conn.execute(sa.select(schedules.c.status).where(schedules.c.id == deep)).scalar()
    assert status == "error"
