"""Grants, approvals, budgets and spend over real HTTP, on SQLite and PostgreSQL.

Each does what its CLI command does, and every write's audit entry names the API key.
"""

import sqlalchemy as sa

from graph_runs.store.tables import approvals, audit_log, run_ledger
from tests.approval_helpers import CREATED, DUE
from tests.graph_runs.api.conftest import Api
from tests.helpers import claim_at, make_grant, make_schedule


def test_grants_create_list_get_revoke(api: Api) -> None:
    client = api.client(api.app_token)
    created = client.post(
        "/v1/grants",
        json={"owner": "carol", "billing_account": "acme", "scopes": ["graph:execute:echo"]},
    )
    assert created.status_code == 201, created.text
    grant = created.json()
    assert created.headers["location"] == f"/v1/grants/{grant['id']}"
    assert client.get(created.headers["location"]).json() == grant
    assert [
        g["id"] for g in client.get("/v1/grants", params={"owner": "carol"}).json()["items"]
    ] == [grant["id"]]
    schedule = client.post(
        "/v1/schedules",
        json={"owner": "carol", "graph_id": "echo", "cron": "0 9 * * *", "grant_id": grant["id"]},
    ).json()
    revoked = client.post(f"/v1/grants/{grant['id']}/revoke")
    assert revoked.json()["revoked_at"] == "2026-12-07T12:00:00Z"
    # As `grants revoke` does, the grant's schedules are paused with it.
    assert revoked.json()["paused_schedules"] == 1
    assert client.get(f"/v1/schedules/{schedule['id']}").json()["enabled"] is False
    assert revoked.json()["revoked_by"].startswith("api:key_")
    bad = client.post(
        "/v1/grants", json={"owner": "carol", "billing_account": "a", "scopes": ["x"]}
    )
    assert bad.status_code == 400 and bad.json()["field"] == "scope"


def test_approve_and_reject_pending_slots(api: Api) -> None:
    with api.engine.begin() as conn:
        grant = make_grant(conn, CREATED, owner="dave")
        make_schedule(conn, CREATED, grant, requires_approval=True)
        make_schedule(conn, CREATED, grant, requires_approval=True, input={"n": 2})
        claim_at(conn, DUE)
        ids = list(conn.execute(sa.select(approvals.c.id).order_by(approvals.c.id)).scalars())
    client = api.client(api.app_token)
    pending = client.get("/v1/approvals").json()["items"]
    assert sorted(a["id"] for a in pending) == ids
    approved = client.post(f"/v1/approvals/{ids[0]}/approve", json={"by": "erin", "note": "ok"})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert approved.json()["decided_by"].startswith("erin via api:key_")
    rejected = client.post(f"/v1/approvals/{ids[1]}/reject")
    assert rejected.json()["status"] == "rejected"
    again = client.post(f"/v1/approvals/{ids[1]}/approve")
    assert again.status_code == 409 and again.json()["code"] == "conflict"
    assert client.get("/v1/approvals").json()["items"] == []
    with api.engine.connect() as conn:
        statuses = set(conn.execute(sa.select(run_ledger.c.status)).scalars())
    assert "rejected" in statuses


def test_budgets_and_spend(api: Api) -> None:
    client = api.client(api.app_token)
    put = client.put("/v1/budgets/alice-billing", json={"limit_usd": "12.50"})
    assert put.status_code == 200, put.text
    assert put.json()["limit_usd"] == "12.5"
    assert put.json()["spent_usd"] == "0"
    listed = client.get("/v1/budgets").json()["items"]
    assert [b["billing_account"] for b in listed] == ["alice-billing"]
    assert (
        client.get("/v1/budgets", headers={"Authorization": f"Bearer {api.alice_token}"}).json()[
            "items"
        ]
        == listed
    )
    negative = client.put("/v1/budgets/alice-billing", json={"limit_usd": "-1"})
    assert negative.status_code == 400 and negative.json()["field"] == "limit_usd"
    spend = client.get("/v1/billing/spend", params={"billing_account": "alice-billing"})
    assert spend.status_code == 200 and spend.json()["total"]["receipts"] == 0
    with api.engine.connect() as conn:
        actor = conn.execute(
            sa.select(audit_log.c.actor).where(audit_log.c.action == "budget.set")
        ).first()
    assert actor is not None and actor[0].startswith("api:key_")
