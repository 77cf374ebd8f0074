"""graph_runs.approvals.gate: approvals opened by a claim, timed out, cancelled with the schedule.

Runs on a real SQLite file and PostgreSQL; the clock is passed in, so timeouts are exact.
"""

import datetime as dt

import pytest
import sqlalchemy as sa

from graph_runs.approvals import decisions as approvals
from graph_runs.approvals import gate as approval_gate
from graph_runs.core.errors import Conflict
from graph_runs.scheduling.schedules import delete_schedule, pause_schedule
from graph_runs.store.tables import run_ledger
from tests.approval_helpers import DUE, audit_actions, gated, only_approval
from tests.helpers import at, claim_at, ledger_statuses


def test_replayed_claim_writes_no_second_approval(engine: sa.Engine) -> None:
    view = gated(engine)
    with engine.begin() as conn:
        # Another tick that re-reads the schedule as it was before the first claim.
        conn.execute(
            sa.text("UPDATE schedules SET next_run_at = NULL, slot_cursor = NULL WHERE id = :id"),
            {"id": view["id"]},
        )
        claim_at(conn, DUE)
    with engine.connect() as conn:
        assert len(approvals.list_approvals(conn)) == 1
        assert len(ledger_statuses(conn, view["id"])) == 1


def test_timeout_skip_records_the_slot_skipped_unapproved(engine: sa.Engine) -> None:
    view = gated(engine, approval_timeout_seconds=600)
    approval = only_approval(engine)
    with engine.begin() as conn:
        early = approval_gate.settle_timeouts(conn, at("2026-11-22T10:11:01Z"), 100)
        late = approval_gate.settle_timeouts(conn, at("2026-11-22T10:11:02Z"), 100)
    assert (dict(early), dict(late)) == ({}, {"expired": 1})
    done = only_approval(engine)
    assert (done["status"], done["decided_by"]) == ("expired", approvals.TIMEOUT_DECIDER)
    with engine.connect() as conn:
        assert ledger_statuses(conn, view["id"]) == [("2026-11-22T10:01:00Z", "skipped_unapproved")]
    assert audit_actions(engine, approval["id"]) == [
        ("approval.timeout_skip", approvals.TIMEOUT_DECIDER)
    ]
    with pytest.raises(Conflict, match="already expired"), engine.begin() as conn:
        approvals.approve(conn, approval["id"], by="late-bob", now=at("2026-11-22T10:12:00Z"))


def test_timeout_approve_approves_in_the_timeouts_name(engine: sa.Engine) -> None:
    gated(engine, approval_timeout_seconds=600, on_approval_timeout="approve")
    with engine.begin() as conn:
        approval_gate.settle_timeouts(conn, at("2026-11-22T10:20:00Z"), 100)
        ((approval, row),) = approval_gate.to_launch(conn, 10)
    assert (approval.status, approval.decided_by) == ("approved", approvals.TIMEOUT_DECIDER)
    assert row.status == "awaiting_approval"


@pytest.mark.parametrize("how", ["pause", "delete"])
def test_pausing_or_deleting_cancels_waiting_slots_and_their_approvals(
    engine: sa.Engine, how: str
) -> None:
    view = gated(engine)
    approval = only_approval(engine)
    with engine.begin() as conn:
        if how == "pause":
            pause_schedule(conn, view["id"], now=DUE, note="holiday", by="ana")
        else:
            delete_schedule(conn, view["id"], now=DUE)
    cancelled = only_approval(engine)
    assert (cancelled["status"], cancelled["run_status"]) == ("cancelled", "cancelled")
    with pytest.raises(Conflict, match="already cancelled"), engine.begin() as conn:
        approvals.approve(conn, approval["id"], by="bob", now=DUE)


def test_gated_buffered_slot_waits_for_approval_not_for_the_running_run(engine: sa.Engine) -> None:
    """Overlap buffer_one must never release a gated slot straight to a run."""
    view = gated(engine, overlap="buffer_one")
    with engine.begin() as conn:
        conn.execute(run_ledger.update().values(status="running"))
        claim_at(conn, DUE + dt.timedelta(minutes=1))
    with engine.connect() as conn:
        assert ledger_statuses(conn, view["id"]) == [
            ("2026-11-22T10:01:00Z", "running"),
            ("2026-11-22T10:02:00Z", "awaiting_approval"),
        ]
        assert [a["status"] for a in approvals.list_approvals(conn)] == ["pending", "pending"]
