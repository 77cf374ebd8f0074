"""graph_runs.approvals.decisions: gated slots, decisions, timeouts, cancellation, in the database.

Runs on a real SQLite file and PostgreSQL; the clock is passed in, so timeouts are exact.
"""

import pytest
import sqlalchemy as sa

from graph_runs.approvals import decisions as approvals
from graph_runs.core.errors import Conflict, InvalidInput, NotFound
from graph_runs.dispatch.ledger import start_run
from graph_runs.store.tables import run_ledger
from tests.approval_helpers import DUE, audit_actions, gated, only_approval
from tests.helpers import at, ledger_statuses


def test_due_gated_slot_waits_with_a_pending_approval_and_no_run(engine: sa.Engine) -> None:
    view = gated(engine, input={"q": 1})
    with engine.connect() as conn:
        assert ledger_statuses(conn, view["id"]) == [("2026-11-22T10:01:00Z", "awaiting_approval")]
        pending = approvals.list_approvals(conn, status="pending")
    (approval,) = pending
    assert approval["schedule_id"] == view["id"]
    assert approval["scheduled_for"] == "2026-11-22T10:01:00Z"
    assert (approval["graph_id"], approval["input"]) == ("echo", {"q": 1})
    assert (approval["owner"], approval["billing_account"]) == ("alice", "alice-billing")
    assert approval["expires_at"] == "2026-11-23T10:01:02Z"  # 24 h after it was written
    assert (approval["on_timeout"], approval["run_status"]) == ("skip", "awaiting_approval")


def test_approve_records_who_when_why_and_audits(engine: sa.Engine) -> None:
    gated(engine)
    approval = only_approval(engine)
    decided_at = at("2026-11-22T10:05:00Z")
    with engine.begin() as conn:
        done = approvals.approve(conn, approval["id"], by="bob", note="looks fine", now=decided_at)
    assert (done["status"], done["decided_by"], done["note"]) == ("approved", "bob", "looks fine")
    assert done["decided_at"] == "2026-11-22T10:05:00Z"
    assert done["run_status"] == "awaiting_approval"  # the sensor launches it
    assert audit_actions(engine, approval["id"]) == [("approval.approve", "bob")]


def test_reject_settles_the_slot_rejected_at_once(engine: sa.Engine) -> None:
    view = gated(engine)
    approval = only_approval(engine)
    with engine.begin() as conn:
        done = approvals.reject(conn, approval["id"], by="bob", note="wrong topic", now=DUE)
    assert (done["status"], done["run_status"]) == ("rejected", "rejected")
    with engine.connect() as conn:
        row = conn.execute(sa.select(run_ledger).where(run_ledger.c.id == done["ledger_id"])).one()
    assert (row.error_code, row.error_message) == ("rejected", "rejected by bob: wrong topic")
    assert row.dagster_run_id is None and row.api_run_id is None
    assert audit_actions(engine, approval["id"]) == [("approval.reject", "bob")]
    with engine.connect() as conn:
        assert ledger_statuses(conn, view["id"]) == [("2026-11-22T10:01:00Z", "rejected")]


@pytest.mark.parametrize(
    ("first", "second"),
    [("approve", "approve"), ("approve", "reject"), ("reject", "approve"), ("reject", "reject")],
)
def test_second_decision_is_refused_and_changes_nothing(
    engine: sa.Engine, first: str, second: str
) -> None:
    gated(engine)
    approval = only_approval(engine)
    with engine.begin() as conn:
        approvals.decide(conn, approval["id"], first, by="bob", now=DUE)  # type: ignore[arg-type]
    before = only_approval(engine)
    with pytest.raises(Conflict, match="already (approved|rejected) by bob"):
        with engine.begin() as conn:
            approvals.decide(conn, approval["id"], second, by="eve", now=DUE)  # type: ignore[arg-type]
    assert only_approval(engine) == before
    assert len(audit_actions(engine, approval["id"])) == 1


def test_bad_decisions_name_the_field(engine: sa.Engine) -> None:
    gated(engine)
    approval = only_approval(engine)
    cases = [
        ({"decision": "maybe", "by": "bob"}, "decision"),
        ({"decision": "approve", "by": "  "}, "by"),
        ({"decision": "approve", "by": "bob", "note": "x" * 2001}, "note"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidInput) as caught, engine.begin() as conn:
            approvals.decide(conn, approval["id"], now=DUE, **kwargs)  # type: ignore[arg-type]
        assert caught.value.field == field
    with pytest.raises(NotFound), engine.begin() as conn:
        approvals.approve(conn, "appr_missing", by="bob", now=DUE)
    assert only_approval(engine)["status"] == "pending"


def test_an_unapproved_slot_cannot_be_started_by_hand(engine: sa.Engine) -> None:
    gated(engine)
    approval = only_approval(engine)
    with pytest.raises(Conflict, match="waiting for approval"), engine.begin() as conn:
        start_run(conn, approval["ledger_id"], dagster_run_id="r1", now=DUE)
    with engine.begin() as conn:
        approvals.approve(conn, approval["id"], by="bob", now=DUE)
        row = start_run(conn, approval["ledger_id"], dagster_run_id="r1", now=DUE)
    assert row.status == "running"


def test_list_filters_and_bad_status(engine: sa.Engine) -> None:
    gated(engine)
    with engine.connect() as conn:
        assert approvals.list_approvals(conn, status="approved") == []
        assert len(approvals.list_approvals(conn, owner="alice")) == 1
        assert approvals.list_approvals(conn, owner="bob") == []
        with pytest.raises(InvalidInput) as caught:
            approvals.list_approvals(conn, status="done")
    assert caught.value.field == "status"
