"""graph_runs.scheduling.schedules: validation names the bad field, writes nothing; the lifecycle.

Create, upsert and update with external ids, pause and resume (note, who, skipped slots),
delete, pause-after-failures, and cancelling runs in flight.

Real SQLite and PostgreSQL databases.
"""

from typing import Any

import pytest
import sqlalchemy as sa

from graph_runs.access.grants import revoke_grant
from graph_runs.core.errors import Conflict, InvalidInput, NotFound
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch.ledger import record_outcome
from graph_runs.execution_api.client import Outcome
from graph_runs.scheduling.schedules import (
    create_schedule,
    delete_schedule,
    find_schedule,
    get_schedule,
    pause_schedule,
    resume_schedule,
    update_schedule,
    upsert_schedule,
)
from graph_runs.store.tables import audit_log, execution_grants, schedules
from tests.helpers import (
    at,
    claim_at,
    ledger_statuses,
    make_grant,
    make_schedule,
    set_run_status,
)

NOW = at("2026-11-22T10:00:30Z")


def count(conn: sa.Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"cron": "not cron"}, "cron", "5-field"),
        ({"timezone": "Europe/Atlantis"}, "timezone", "unknown IANA"),
        ({"cron": None}, "cron", "either a cron expression or a one-time run_at"),
        ({"input": {"blob": "x" * 70_000}}, "input", "the limit is 65536"),
        ({"graph_id": "bad graph id"}, "graph_id", "pattern"),
        ({"max_cost_usd": "-1"}, "max_cost_usd", "greater than or equal to 0"),
        ({"timeout_seconds": 0}, "timeout_seconds", "greater than 0"),
        ({"grant_id": "grt_nope"}, "grant_id", "not found"),
    ],
)
def test_bad_input_names_its_field_and_writes_nothing(
    engine: sa.Engine, fields: dict[str, Any], field: str, fragment: str
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        before = count(conn, schedules), count(conn, audit_log)
        with pytest.raises(InvalidInput, match=fragment) as caught:
            make_schedule(conn, NOW, grant, **fields)
        assert caught.value.field == field
        assert (count(conn, schedules), count(conn, audit_log)) == before


def test_interval_below_the_configured_minimum_is_refused(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        raw = {"owner": "alice", "graph_id": "echo", "cron": "*/2 * * * *", "grant_id": grant.id}
        with pytest.raises(InvalidInput, match="fires every 120 s .* minimum interval is 300 s"):
            create_schedule(conn, raw, limits=ScheduleLimits(min_interval_seconds=300), now=NOW)
        assert count(conn, schedules) == 0


def test_schedules_per_owner_are_limited(engine: sa.Engine) -> None:
    limits = ScheduleLimits(max_schedules_per_owner=2)
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        raw = {"owner": "alice", "graph_id": "echo", "cron": "0 * * * *", "grant_id": grant.id}
        create_schedule(conn, raw, limits=limits, now=NOW)
        create_schedule(conn, raw, limits=limits, now=NOW)
        with pytest.raises(InvalidInput, match="alice has 2 schedules; the limit is 2") as caught:
            create_schedule(conn, raw, limits=limits, now=NOW)
        assert caught.value.field == "owner"


def test_grant_of_another_owner_is_refused(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW, owner="bob")
        raw = {"owner": "alice", "graph_id": "echo", "cron": "0 * * * *", "grant_id": grant.id}
        with pytest.raises(InvalidInput, match="belongs to bob"):
            create_schedule(conn, raw, limits=ScheduleLimits(), now=NOW)


@pytest.mark.parametrize(
    ("scopes", "change", "fragment"),
    [
        (["graph:execute:other"], None, "cannot run graph echo: it has no scope"),
        (["graph:execute:echo"], "revoke", "was revoked"),
        (["graph:execute:echo"], "expire", "expired at 2026-11-22T10:00:00Z"),
    ],
)
def test_a_grant_that_could_not_run_the_graph_is_refused_at_create_and_update(
    engine: sa.Engine, scopes: list[str], change: str | None, fragment: str
) -> None:
    # Issue 22: each would have been accepted and failed at every fire.
    with engine.begin() as conn:
        good = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, good)
        grant = make_grant(conn, NOW, scopes=scopes)
        if change == "expire":
            conn.execute(
                execution_grants.update()
                .where(execution_grants.c.id == grant.id)
                .values(expires_at=at("2026-11-22T10:00:00Z"))
            )
        if change == "revoke":
            revoke_grant(conn, grant.id, now=NOW, by="security")
    raw = {"owner": "alice", "graph_id": "echo", "cron": "0 * * * *", "grant_id": grant.id}
    with engine.begin() as conn:
        with pytest.raises(InvalidInput, match=fragment) as refused:
            create_schedule(conn, raw, limits=ScheduleLimits(), now=NOW)
        assert refused.value.field == "grant_id"
        with pytest.raises(InvalidInput, match=fragment):
            update_schedule(
                conn, view["id"], {"grant_id": grant.id}, limits=ScheduleLimits(), now=NOW
            )
        assert count(conn, schedules) == 1
        assert get_schedule(conn, view["id"])["grant_id"] == good.id


def test_a_run_at_in_the_past_is_refused_and_one_a_moment_ago_is_now(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        with pytest.raises(InvalidInput, match="is in the past") as refused:
            make_schedule(conn, NOW, grant, cron=None, run_at="2026-11-22T09:59:00Z")
        assert refused.value.field == "run_at"
        # Within RUN_AT_GRACE of the clock: a slow or skewed client's "now".
        view = make_schedule(conn, NOW, grant, cron=None, run_at="2026-11-22T09:59:45Z")
        assert view["next_run_at"] == "2026-11-22T09:59:45Z"
        # Retimed into the past later: refused too; other edits of it are not.
        with pytest.raises(InvalidInput, match="is in the past"):
            update_schedule(
                conn,
                view["id"],
                {"run_at": "2026-11-22T09:00:00Z"},
                limits=ScheduleLimits(),
                now=NOW,
            )
        later = at("2026-11-22T11:00:00Z")
        update_schedule(
            conn, view["id"], {"input": {"topic": "sport"}}, limits=ScheduleLimits(), now=later
        )
        assert count(conn, schedules) == 1


def test_create_computes_next_run_at_in_the_schedules_zone(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant, cron="0 9 * * 1-5", timezone="Europe/Berlin")
    # 2026-11-22 is a Sunday: the next weekday 09:00 in Berlin (CET) is Monday 08:00Z.
    assert view["next_run_at"] == "2026-11-23T08:00:00Z"
    assert view["status"] == "active" and view["runs_total"] == 0


def test_pause_resume_and_delete(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant, cron="0 * * * *")
        paused = pause_schedule(conn, view["id"], now=NOW, note="holiday")
        assert (paused["enabled"], paused["pause_note"]) == (False, "holiday")
        assert pause_schedule(conn, view["id"], now=at("2026-11-22T11:00:00Z"), note="x") == paused
        later = at("2026-11-22T15:20:00Z")
        resumed = resume_schedule(conn, view["id"], now=later, limits=ScheduleLimits())
        # Resuming starts from now: the slots of 11:00 .. 15:00 are not fired.
        assert resumed["enabled"] and resumed["next_run_at"] == "2026-11-22T16:00:00Z"
        assert delete_schedule(conn, view["id"], now=later) is True
        assert delete_schedule(conn, view["id"], now=later) is False
        with pytest.raises(NotFound):
            get_schedule(conn, view["id"])
        assert conn.execute(sa.select(schedules.c.status)).scalar_one() == "deleted"


def test_external_id_is_unique_per_owner_and_a_second_create_is_a_conflict(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        bob = make_grant(conn, NOW, owner="bob")
        first = make_schedule(conn, NOW, grant, external_id="digest-1")
        make_schedule(conn, NOW, bob, external_id="digest-1")  # another owner: fine
        before = count(conn, schedules)
        with pytest.raises(Conflict, match=f"already has schedule {first['id']}"):
            make_schedule(conn, NOW, grant, external_id="digest-1")
        assert count(conn, schedules) == before
        assert find_schedule(conn, "alice", "digest-1")["id"] == first["id"]
        # Once deleted, the external id is free again.
        delete_schedule(conn, first["id"], now=NOW)
        assert make_schedule(conn, NOW, grant, external_id="digest-1")["id"] != first["id"]


def _refuse_schedule_updates(conn: sa.Connection) -> None:
    """Make the database refuse the next update of a schedule as a uniqueness violation.

    Stands in for another writer taking the same external id between the update's check and
    its write: the one error the update's statement can meet.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'taken meanwhile' USING ERRCODE = 'unique_violation'; END $$"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE UPDATE ON schedules "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    else:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE UPDATE ON schedules "
            "BEGIN SELECT RAISE(ABORT, 'taken meanwhile'); END"
        )


def test_an_update_the_database_refuses_leaves_no_audit_entry(engine: sa.Engine) -> None:
    """Review defect: the audit entry was written before the update.

    When the update failed, a caller that went on with its transaction (and committed) kept
    an entry for a change that never happened.
    """
    with engine.begin() as conn:
        view = make_schedule(conn, NOW, make_grant(conn, NOW), external_id="digest-1")
        _refuse_schedule_updates(conn)
    try:
        with engine.begin() as conn:
            with pytest.raises(
                Conflict, match="already has a schedule with external id 'digest-2'"
            ):
                update_schedule(
                    conn, view["id"], {"external_id": "digest-2"}, limits=ScheduleLimits(), now=NOW
                )
            # The caller's transaction goes on, and commits.
    finally:
        with engine.begin() as conn:  # the Postgres test database outlives this test
            conn.exec_driver_sql(
                "DROP TRIGGER refuse"
                + (" ON schedules" if conn.dialect.name == "postgresql" else "")
            )
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("DROP FUNCTION refuse()")
    with engine.connect() as conn:
        actions = conn.execute(sa.select(audit_log.c.action)).scalars().all()
        stored = conn.execute(sa.select(schedules.c.external_id)).scalar_one()
    assert actions == ["grant.create", "schedule.create"]
    assert stored == "digest-1"


def test_upsert_creates_then_updates_in_place_then_changes_nothing(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        raw = {
            "owner": "alice",
            "external_id": "app-42",
            "graph_id": "echo",
            "cron": "0 9 * * *",
            "grant_id": grant.id,
            "overlap": "allow_all",
        }
        created, outcome = upsert_schedule(conn, raw, limits=ScheduleLimits(), now=NOW)
        assert outcome == "created"
        later = at("2026-11-22T12:00:00Z")
        changed = {**raw, "cron": "0 18 * * *", "timezone": "Europe/Berlin"}
        changed.pop("overlap")
        updated, outcome = upsert_schedule(conn, changed, limits=ScheduleLimits(), now=later)
        assert outcome == "updated" and updated["id"] == created["id"]
        # The cron change recomputes the next slot from now; overlap left out is the default.
        assert updated["next_run_at"] == "2026-11-22T17:00:00Z"
        assert updated["policies"]["overlap"] == "skip"
        same, outcome = upsert_schedule(conn, changed, limits=ScheduleLimits(), now=later)
        assert outcome == "unchanged" and same == updated
        with pytest.raises(InvalidInput, match="external_id: is required"):
            upsert_schedule(conn, {"owner": "alice"}, limits=ScheduleLimits(), now=later)


def test_changing_the_cron_or_zone_recomputes_next_run_at_from_now(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant, cron="0 9 * * *")
        assert view["next_run_at"] == "2026-11-23T09:00:00Z"
        later = at("2026-11-22T20:00:00Z")
        zoned = update_schedule(
            conn, view["id"], {"timezone": "Asia/Tokyo"}, limits=ScheduleLimits(), now=later
        )
        assert zoned["next_run_at"] == "2026-11-23T00:00:00Z"
        hourly = update_schedule(
            conn, view["id"], {"cron": "30 * * * *"}, limits=ScheduleLimits(), now=later
        )
        assert hourly["next_run_at"] == "2026-11-22T20:30:00Z"
        # A change that does not move the slots leaves next_run_at alone.
        capped = update_schedule(
            conn, view["id"], {"max_cost_usd": "0.5"}, limits=ScheduleLimits(), now=NOW
        )
        assert capped["next_run_at"] == "2026-11-22T20:30:00Z"
        assert capped["max_cost_usd"] == "0.5"


def test_pause_keeps_note_and_who_and_resume_records_the_paused_slots(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant, cron="0 * * * *")
        paused = pause_schedule(conn, view["id"], now=NOW, note="holiday", by="ops@acme")
        assert (paused["pause_note"], paused["paused_by"]) == ("holiday", "ops@acme")
        assert paused["paused_at"] == "2026-11-22T10:00:30Z"
        resumed = resume_schedule(
            conn, view["id"], now=at("2026-11-22T13:20:00Z"), limits=ScheduleLimits()
        )
        assert resumed["next_run_at"] == "2026-11-22T14:00:00Z"
        assert resumed["pause_note"] is None and resumed["paused_by"] is None
        assert ledger_statuses(conn, view["id"]) == [
            ("2026-11-22T11:00:00Z", "skipped_paused"),
            ("2026-11-22T12:00:00Z", "skipped_paused"),
            ("2026-11-22T13:00:00Z", "skipped_paused"),
        ]
        # Resuming an active schedule changes nothing, and the next claim fires 14:00 only.
        again = resume_schedule(
            conn, view["id"], now=at("2026-11-22T13:30:00Z"), limits=ScheduleLimits()
        )
        assert again == resumed
        claim_at(conn, at("2026-11-22T14:00:05Z"))
        assert ledger_statuses(conn, view["id"])[-1] == ("2026-11-22T14:00:00Z", "pending")
        assert len(ledger_statuses(conn, view["id"])) == 4


def test_unknown_schedules_raise_not_found_except_on_delete(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for call in (
            lambda: get_schedule(conn, "sch_nope"),
            lambda: pause_schedule(conn, "sch_nope", now=NOW, note=None),
            lambda: resume_schedule(conn, "sch_nope", now=NOW, limits=ScheduleLimits()),
        ):
            with pytest.raises(NotFound, match="schedule sch_nope not found"):
                call()
        assert delete_schedule(conn, "sch_nope", now=NOW) is False


def test_pausing_cancels_runs_not_started_and_terminate_reaches_running_ones(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant, cron="* * * * *", overlap="allow_all", catchup="all")
        claim_at(conn, at("2026-11-22T10:03:05Z"))
        set_run_status(conn, view["id"], "2026-11-22T10:01:00Z", "running", "run-a")
        set_run_status(conn, view["id"], "2026-11-22T10:02:00Z", "queued", "run-b")
        pause_schedule(conn, view["id"], now=at("2026-11-22T10:03:10Z"), note="stop")
        assert ledger_statuses(conn, view["id"]) == [
            ("2026-11-22T10:01:00Z", "running"),
            ("2026-11-22T10:02:00Z", "cancelling"),
            ("2026-11-22T10:03:00Z", "cancelled"),
        ]
        resume_schedule(conn, view["id"], now=at("2026-11-22T10:03:20Z"), limits=ScheduleLimits())
        delete_schedule(conn, view["id"], now=at("2026-11-22T10:03:30Z"), terminate=True)
        assert [s for _, s in ledger_statuses(conn, view["id"])] == [
            "cancelling",
            "cancelling",
            "cancelled",
        ]


def test_consecutive_failures_pause_the_schedule_with_the_last_error(engine: sa.Engine) -> None:
    failed = Outcome(status="failed", error_code="graph_error", error_message="boom")
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant, cron="* * * * *", pause_after_failures=2)
        for minute, outcome in (
            (1, failed),
            (2, Outcome(status="succeeded", api_run_id="api-2")),
            (3, failed),
            (4, failed),
        ):
            claim_at(conn, at(f"2026-11-22T10:0{minute}:05Z"))
            slot = f"2026-11-22T10:0{minute}:00Z"
            ledger_id = set_run_status(conn, view["id"], slot, "running", f"run-{minute}")
            record_outcome(conn, ledger_id, outcome, dagster_run_id=f"run-{minute}", now=NOW)
            state = get_schedule(conn, view["id"])
            # A success in between resets the count: only 10:03 and 10:04 in a row pause it.
            assert state["enabled"] is (minute != 4)
        assert state["paused_by"] == "graph-runs (consecutive failures)"
        assert state["pause_note"] == (
            "paused after 2 consecutive failed runs; last error: graph_error: boom"
        )
        assert state["consecutive_failures"] == 2


def test_zero_disables_pause_after_failures(engine: sa.Engine) -> None:
    failed = Outcome(status="failed", error_code="graph_error", error_message="boom")
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant, cron="* * * * *", pause_after_failures=0)
        for minute in range(1, 6):
            claim_at(conn, at(f"2026-11-22T10:0{minute}:05Z"))
            slot = f"2026-11-22T10:0{minute}:00Z"
            ledger_id = set_run_status(conn, view["id"], slot, "running", f"run-{minute}")
            record_outcome(conn, ledger_id, failed, dagster_run_id=f"run-{minute}", now=NOW)
        state = get_schedule(conn, view["id"])
        assert state["enabled"] and state["consecutive_failures"] == 5


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"overlap": "queue"}, "overlap", "skip"),
        ({"catchup": "some"}, "catchup", "latest"),
        ({"max_runs": 0}, "max_runs", "greater than or equal to 1"),
        ({"pause_after_failures": -1}, "pause_after_failures", "greater than or equal to 0"),
        ({"end_at": "2026-11-22T09:00:00Z"}, "end_at", "in the past"),
        (
            {"start_at": "2026-11-25T00:00:00Z", "end_at": "2026-11-24T00:00:00Z"},
            "end_at",
            "after start_at",
        ),
        ({"cron": "0 * * * *", "jitter_seconds": 3600}, "jitter", "shorter than the shortest gap"),
        ({"cron": None, "run_at": "2026-11-23T00:00:00Z", "max_runs": 2}, "max_runs", "cron"),
    ],
)
def test_bad_policies_name_their_field_and_write_nothing(
    engine: sa.Engine, fields: dict[str, Any], field: str, fragment: str
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        with pytest.raises(InvalidInput, match=fragment) as caught:
            make_schedule(conn, NOW, grant, **fields)
        assert caught.value.field == field
        assert count(conn, schedules) == 0


def test_updating_a_row_marked_error_fixes_and_reactivates_it(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant, cron="0 * * * *")
        conn.execute(
            schedules.update().values(cron="0 25 * * *", status="error", last_error="cron: bad")
        )
        fixed = update_schedule(
            conn, view["id"], {"cron": "0 9 * * *"}, limits=ScheduleLimits(), now=NOW
        )
    assert (fixed["status"], fixed["last_error"]) == ("active", None)
    assert fixed["next_run_at"] == "2026-11-23T09:00:00Z"
