"""graph_runs.scheduling.refire: a schedule's failed slots in a range fire again, same key.

Real SQLite and PostgreSQL databases. Outcomes are recorded through the ledger as the
dispatch op records them; the sensor (tested in tests/graph_runs/jobs/test_jobs.py) fires
what a refire left pending.
"""

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from graph_runs.core.errors import InvalidInput, NotFound
from graph_runs.dispatch import ledger
from graph_runs.execution_api.client import Outcome
from graph_runs.scheduling.refire import refire_schedule
from graph_runs.scheduling.schedules import delete_schedule
from graph_runs.store.tables import audit_log, run_ledger, schedules
from tests.helpers import at, claim_at, ledger_statuses, make_grant, make_schedule

CREATED = at("2026-11-19T00:00:30Z")
NOW = at("2026-11-23T12:00:00Z")
# What each daily 09:00 slot ended as: two failures before the API, one after it accepted.
OUTCOMES = {
    "2026-11-19T09:00:00Z": Outcome(status="failed", error_code="scope_denied"),
    "2026-11-20T09:00:00Z": Outcome(status="succeeded", api_run_id="apirun_ok"),
    "2026-11-21T09:00:00Z": Outcome(
        status="failed", api_run_id="apirun_slow", error_code="timeout", error_message="slow"
    ),
    "2026-11-22T09:00:00Z": Outcome(status="failed", error_code="api_unavailable"),
}


def four_slots(conn: sa.Connection) -> str:
    grant = make_grant(conn, CREATED)
    view = make_schedule(conn, CREATED, grant, cron="0 9 * * *")
    for slot, outcome in OUTCOMES.items():
        claim_at(conn, at(slot) + dt.timedelta(seconds=5))
        row = conn.execute(
            sa.select(run_ledger.c.id).where(run_ledger.c.scheduled_for == at(slot))
        ).one()
        ledger.record_outcome(conn, row.id, outcome, dagster_run_id=f"run-{slot}", now=at(slot))
    return str(view["id"])


def refire(conn: sa.Connection, schedule_id: str, start: str, end: str, **kw: Any) -> dict:
    return refire_schedule(conn, schedule_id, start=at(start), end=at(end), now=NOW, **kw)


def counts(conn: sa.Connection, schedule_id: str) -> tuple[int, int, int]:
    row = conn.execute(sa.select(schedules).where(schedules.c.id == schedule_id)).one()
    return row.runs_succeeded, row.runs_failed, row.consecutive_failures


def rows(conn: sa.Connection) -> dict[str, Any]:
    return {
        r.scheduled_for.isoformat(): r
        for r in conn.execute(sa.select(run_ledger).order_by(run_ledger.c.scheduled_for))
    }


def test_refire_fires_the_failed_slots_of_the_range_again_with_their_key_and_body(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        schedule_id = four_slots(conn)
        before = rows(conn)
        assert counts(conn, schedule_id) == (1, 3, 2)
        report = refire(
            conn, schedule_id, "2026-11-19T00:00:00Z", "2026-11-21T23:00:00Z", requested_by="ana"
        )
        assert (report["failed"], report["refired"], report["skipped_overlap"]) == (2, 2, 0)
        # The slot the API accepted is answered with its run, polled to its end: no second one.
        assert [(d["slot"], d["api_run_id"]) for d in report["detail"]] == [
            ("2026-11-19T09:00:00Z", None),
            ("2026-11-21T09:00:00Z", "apirun_slow"),
        ]
        assert ledger_statuses(conn, schedule_id) == [
            ("2026-11-19T09:00:00Z", "pending"),
            ("2026-11-20T09:00:00Z", "succeeded"),
            ("2026-11-21T09:00:00Z", "pending"),
            ("2026-11-22T09:00:00Z", "failed"),  # outside the range
        ]
        after = rows(conn)
        # Out of the counts until their new outcome: one failure is left, the 22nd's. The
        # streak loses one per refired slot, whether or not that slot was in it: a refire
        # can delay an auto-pause, never bring one on.
        assert counts(conn, schedule_id) == (1, 1, 0)
        body_fields = ("idempotency_key", "input", "grant_id", "trigger_kind", "requested_by")
        for key in ("2026-11-19T09:00:00+00:00", "2026-11-21T09:00:00+00:00"):
            old, new = before[key], after[key]
            # The API compares a known key's body: the refire changes neither.
            assert [getattr(new, f) for f in body_fields] == [getattr(old, f) for f in body_fields]
            assert (new.due_at, new.batch_id, new.dagster_run_id, new.error_code) == (
                NOW, None, None, None,
            )  # fmt: skip
            assert new.api_run_id == old.api_run_id
        (entry,) = conn.execute(
            sa.select(audit_log).where(audit_log.c.action == "schedule.refire")
        ).all()
        assert (entry.actor, entry.entity_id) == ("ana", schedule_id)
        # Nothing is failed in the range any more: a second refire does nothing.
        again = refire(conn, schedule_id, "2026-11-19T00:00:00Z", "2026-11-21T23:00:00Z")
        assert (again["failed"], again["refired"]) == (0, 0)


def test_a_refired_slot_that_fails_again_is_one_failure(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        schedule_id = four_slots(conn)
        row = rows(conn)["2026-11-19T09:00:00+00:00"]
        for attempt in range(3):
            refire(conn, schedule_id, "2026-11-19T00:00:00Z", "2026-11-19T23:00:00Z")
            ledger.start_run(conn, row.id, dagster_run_id=f"again-{attempt}", now=NOW)
            failed = Outcome(status="failed", error_code="scope_denied")
            ledger.record_outcome(conn, row.id, failed, dagster_run_id=f"again-{attempt}", now=NOW)
        # Three refires of one slot: still one failure among the three failed slots.
        assert counts(conn, schedule_id)[:2] == (1, 3)
        assert conn.execute(sa.select(schedules.c.enabled)).scalar_one()


def test_re_executing_the_run_of_a_failed_slot_does_not_start_it(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        schedule_id = four_slots(conn)
        row = rows(conn)["2026-11-22T09:00:00+00:00"]
        again = ledger.start_run(conn, row.id, dagster_run_id="re-execution", now=NOW)
        assert (again.status, again.dagster_run_id) == ("failed", row.dagster_run_id)
        assert counts(conn, schedule_id) == (1, 3, 2)


def test_under_skip_overlap_only_the_first_failed_slot_fires_and_the_rest_stay_failed(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        schedule_id = four_slots(conn)
        report = refire(
            conn, schedule_id, "2026-11-19T00:00:00Z", "2026-11-23T00:00:00Z", overlap="skip"
        )
        assert (report["failed"], report["refired"], report["skipped_overlap"]) == (3, 1, 2)
        assert [s for _, s in ledger_statuses(conn, schedule_id)] == [
            "pending", "succeeded", "failed", "failed",
        ]  # fmt: skip
        assert counts(conn, schedule_id) == (1, 2, 1)


@pytest.mark.parametrize(
    ("start", "end", "kw", "field"),
    [
        ("2026-11-22T00:00:00Z", "2026-11-19T00:00:00Z", {}, "to"),
        ("2026-11-19T00:00:00Z", "2026-11-23T00:00:00Z", {"overlap": "never"}, "overlap"),
    ],
)
def test_bad_input_names_its_field_and_writes_nothing(
    engine: sa.Engine, start: str, end: str, kw: dict[str, str], field: str
) -> None:
    with engine.begin() as conn:
        schedule_id = four_slots(conn)
        before = ledger_statuses(conn, schedule_id)
        with pytest.raises(InvalidInput) as refused:
            refire(conn, schedule_id, start, end, **kw)
        assert refused.value.field == field
        assert ledger_statuses(conn, schedule_id) == before
        assert counts(conn, schedule_id) == (1, 3, 2)


def test_unknown_and_deleted_schedules_are_not_found(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        schedule_id = four_slots(conn)
        with pytest.raises(NotFound):
            refire(conn, "sch_nope", "2026-11-19T00:00:00Z", "2026-11-23T00:00:00Z")
        delete_schedule(conn, schedule_id, now=NOW)
        with pytest.raises(NotFound):
            refire(conn, schedule_id, "2026-11-19T00:00:00Z", "2026-11-23T00:00:00Z")
