"""graph_runs.cli.approvals: approvals list/approve/reject and webhooks serve, as typed.

Runs main() in-process against a real database; the slot comes due through a real claim.
"""

import datetime as dt

from graph_runs.store.db import make_engine
from tests.helpers import claim_at


def waiting_approval(cli, database_url: str) -> str:
    code, grant, _ = cli(
        "grants", "create", "--owner", "alice", "--billing-account", "acme",
        "--scope", "graph:execute:*", "--json",
    )  # fmt: skip
    assert code == 0
    code, schedule, _ = cli(
        "schedules", "create", "--owner", "alice", "--graph", "daily-digest",
        "--cron", "* * * * *", "--grant", grant["id"], "--input", '{"day": 1}',
        "--requires-approval", "--approval-timeout", "2h", "--json",
    )  # fmt: skip
    assert code == 0 and schedule["policies"]["approval_timeout"] == "2h"
    engine = make_engine(database_url)
    with engine.begin() as conn:
        claim_at(conn, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
    engine.dispose()
    code, pending, _ = cli("approvals", "list", "--status", "pending", "--json")
    assert code == 0 and len(pending) >= 1
    assert {(a["graph_id"], a["billing_account"]) for a in pending} == {("daily-digest", "acme")}
    return str(pending[0]["id"])


def test_approve_then_a_second_decision_exits_2(cli, database_url: str) -> None:
    approval_id = waiting_approval(cli, database_url)
    code, approved, _ = cli(
        "approvals", "approve", approval_id, "--by", "bob", "--note", "fine", "--json"
    )
    assert code == 0
    assert (approved["status"], approved["decided_by"], approved["note"]) == (
        "approved",
        "bob",
        "fine",
    )
    code, _, err = cli("approvals", "reject", approval_id, "--by", "eve")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: approval {approval_id} is already approved by bob")
    code, listed, _ = cli("approvals", "list", "--status", "approved", "--json")
    assert [a["id"] for a in listed] == [approval_id]


def test_reject_and_bad_input(cli, database_url: str) -> None:
    approval_id = waiting_approval(cli, database_url)
    code, _, err = cli("approvals", "approve", approval_id)
    assert code == 2 and "--by" in err
    code, _, err = cli("approvals", "list", "--status", "done")
    assert code == 2 and "--status" in err
    code, _, err = cli("approvals", "approve", "appr_nope", "--by", "bob")
    assert (code, err) == (2, "error: approval appr_nope not found\n")
    code, rejected, _ = cli("approvals", "reject", approval_id, "--by", "bob", "--json")
    assert code == 0 and (rejected["status"], rejected["run_status"]) == ("rejected", "rejected")
    code, text, _ = cli("approvals", "list", "--status", "rejected")
    assert code == 0 and f"{approval_id}  schedule=" in text and "rejected by bob" in text


def test_webhooks_serve_without_a_secret_exits_2(cli, monkeypatch) -> None:
    monkeypatch.delenv("GRAPH_RUNS_WEBHOOK_SECRET", raising=False)
    code, _, err = cli("webhooks", "serve", "--port", "1")
    assert (code, err) == (
        2,
        "error: GRAPH_RUNS_WEBHOOK_SECRET must be set to the webhook's shared secret\n",
    )
