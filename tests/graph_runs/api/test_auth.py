"""API keys over real HTTP, on SQLite and PostgreSQL.

One 401 for every bad key, 403 for a missing scope, and an owner-scoped key that cannot
read, list, change or trigger another owner's schedule, grant, slot or approval: each
answers as for an id that does not exist.
"""

import datetime as dt

import sqlalchemy as sa

from graph_runs.access.api_keys import create_api_key, revoke_api_key
from graph_runs.api.auth import KEY_CACHE_SECONDS
from graph_runs.store.tables import approvals, execution_grants, schedules
from tests.approval_helpers import CREATED, DUE
from tests.graph_runs.api.conftest import Api
from tests.helpers import claim_at, make_grant, make_schedule


def test_every_bad_key_gets_the_same_401(api: Api) -> None:
    with api.engine.begin() as conn:
        key, token = create_api_key(
            conn, name="old", owner=None, scopes=["schedules:read"], now=api.clock.now
        )
        revoke_api_key(conn, key.id, now=api.clock.now, by="test")
    key_id = api.app_token.split(".")[0]
    tokens = [None, "garbage", f"{key_id}.wrong-secret", "key_" + "0" * 32 + ".x", token]
    bodies = []
    for bad in tokens:
        answer = api.client(bad).get("/v1/schedules")
        assert answer.status_code == 401, bad
        assert answer.headers["www-authenticate"] == "Bearer"
        bodies.append(answer.json())
    assert all(body == bodies[0] for body in bodies)
    assert "wrong-secret" not in str(bodies)


def test_a_missing_scope_is_403(api: Api) -> None:
    with api.engine.begin() as conn:
        _, reader = create_api_key(
            conn, name="reader", owner=None, scopes=["schedules:read"], now=api.clock.now
        )
    client = api.client(reader)
    assert client.get("/v1/schedules").status_code == 200
    refused = client.post("/v1/schedules", json=api.spec())
    assert refused.status_code == 403 and "schedules:write" in refused.json()["detail"]
    with api.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schedules)).scalar_one() == 0


def test_owner_key_writes_for_its_owner_only(api: Api) -> None:
    client = api.client(api.alice_token)
    spec = api.spec()
    del spec["owner"]
    created = client.post("/v1/schedules", json=spec)
    assert created.status_code == 201 and created.json()["owner"] == "alice"
    for_bob = client.post("/v1/schedules", json=api.spec("bob"))
    assert for_bob.status_code == 400 and for_bob.json()["field"] == "owner"
    upsert = client.put("/v1/schedules/by-external-id/bob/x", json=api.spec("bob"))
    assert upsert.status_code == 400 and upsert.json()["field"] == "owner"
    grant = client.post(
        "/v1/grants", json={"owner": "bob", "billing_account": "b", "scopes": ["graph:execute:*"]}
    )
    assert grant.status_code == 400 and grant.json()["field"] == "owner"
    budget = client.put("/v1/budgets/alice-billing", json={"limit_usd": "1"})
    assert budget.status_code == 403


def test_owner_key_cannot_see_or_touch_another_owners_things(api: Api) -> None:
    with api.engine.begin() as conn:
        bob_grant = make_grant(conn, CREATED, owner="bob")
        bob = make_schedule(conn, CREATED, bob_grant, requires_approval=True)["id"]
        claim_at(conn, DUE)
        (approval,) = conn.execute(sa.select(approvals.c.id)).scalars()
    alice = api.client(api.alice_token)
    missing = {"schedule": "sch_" + "0" * 32, "grant": "grt_" + "0" * 32, "approval": "apr_0"}

    def both(method: str, template: str, kind: str, real: str, **kwargs) -> None:
        theirs = alice.request(method, template.format(real), **kwargs)
        nobody = alice.request(method, template.format(missing[kind]), **kwargs)
        assert theirs.status_code == nobody.status_code, (method, template)
        assert theirs.json()["detail"].replace(real, "ID") == nobody.json()["detail"].replace(
            missing[kind], "ID"
        ), (method, template)
        assert theirs.status_code == 404, (method, template, theirs.text)

    star = {"If-Match": "*"}
    for method, path, kwargs in [
        ("GET", "/v1/schedules/{}", {}),
        ("GET", "/v1/schedules/{}/describe", {}),
        ("GET", "/v1/schedules/{}/slots", {}),
        ("PATCH", "/v1/schedules/{}", {"json": {"cron": "0 1 * * *"}, "headers": star}),
        ("PUT", "/v1/schedules/{}", {"json": api.spec("bob"), "headers": star}),
        ("POST", "/v1/schedules/{}/pause", {}),
        ("POST", "/v1/schedules/{}/resume", {}),
        ("POST", "/v1/schedules/{}/trigger", {}),
        (
            "POST",
            "/v1/schedules/{}/backfill",
            {"json": {"from": "2026-11-22T00:00:00Z", "to": "2026-11-22T01:00:00Z"}},
        ),
        ("DELETE", "/v1/schedules/{}", {}),
    ]:
        both(method, path, "schedule", bob, **kwargs)
    for method, path in [("GET", "/v1/grants/{}"), ("POST", "/v1/grants/{}/revoke")]:
        both(method, path, "grant", bob_grant.id)
    for method, path in [
        ("GET", "/v1/approvals/{}"),
        ("POST", "/v1/approvals/{}/approve"),
        ("POST", "/v1/approvals/{}/reject"),
    ]:
        both(method, path, "approval", approval)
    # Lists hold the key's owner, whatever the filter asks.
    assert alice.get("/v1/schedules").json()["items"] == []
    assert alice.get("/v1/schedules", params={"owner": "bob"}).json()["items"] == []
    assert [g["owner"] for g in alice.get("/v1/grants").json()["items"]] == ["alice"]
    assert alice.get("/v1/grants", params={"owner": "bob"}).json()["items"] == []
    assert alice.get("/v1/approvals").json()["items"] == []
    spend = alice.get("/v1/billing/spend", params={"billing_account": "bob-billing"})
    assert spend.status_code == 404
    # And nothing of Bob's changed.
    with api.engine.connect() as conn:
        row = conn.execute(sa.select(schedules).where(schedules.c.id == bob)).one()
        assert row.enabled and row.status == "active" and row.cron == "* * * * *"
        assert conn.execute(sa.select(approvals.c.status)).scalar_one() == "pending"
        revoked = conn.execute(
            sa.select(execution_grants.c.revoked_at).where(execution_grants.c.id == bob_grant.id)
        ).scalar_one()
        assert revoked is None
    # The app key sees Bob's approval.
    app = api.client(api.app_token)
    assert [a["id"] for a in app.get("/v1/approvals").json()["items"]] == [approval]


def test_a_revoked_key_stops_working_within_the_cache_time(api: Api) -> None:
    with api.engine.begin() as conn:
        key, token = create_api_key(
            conn, name="soon", owner=None, scopes=["schedules:read"], now=api.clock.now
        )
    client = api.client(token)
    assert client.get("/v1/schedules").status_code == 200
    with api.engine.begin() as conn:
        revoke_api_key(conn, key.id, now=api.clock.now, by="test")
    # Found live a moment ago, the key is trusted for KEY_CACHE_SECONDS of the API's clock.
    assert client.get("/v1/schedules").status_code == 200
    api.clock.now += dt.timedelta(seconds=KEY_CACHE_SECONDS)
    assert client.get("/v1/schedules").status_code == 401
