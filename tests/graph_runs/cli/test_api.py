"""``graph-runs api-keys`` and ``graph-runs api openapi``, run in-process on each backend."""

import json

import sqlalchemy as sa

from graph_runs.access.api_keys import authenticate
from graph_runs.store.db import make_engine
from graph_runs.store.tables import api_keys


def test_create_shows_the_token_once_and_stores_only_its_hash(cli, database_url: str) -> None:
    code, created, _ = cli(
        "api-keys",
        "create",
        "--name",
        "web",
        "--owner",
        "alice",
        "--scopes",
        "schedules:read,schedules:write",
        "--json",
    )
    assert code == 0
    token = created["token"]
    assert created["scopes"] == ["schedules:read", "schedules:write"]
    engine = make_engine(database_url)
    with engine.connect() as conn:
        row = conn.execute(sa.select(api_keys)).one()
        assert token.split(".")[1] not in json.dumps([str(v) for v in row])
        assert authenticate(conn, token) is not None
    code, listed, _ = cli("api-keys", "list", "--json")
    assert [k["id"] for k in listed] == [created["id"]] and "token" not in listed[0]
    code, revoked, _ = cli("api-keys", "revoke", created["id"], "--json")
    assert code == 0 and revoked["revoked_at"]
    with engine.connect() as conn:
        assert authenticate(conn, token) is None
    engine.dispose()


def test_bad_scopes_exit_2_naming_the_field(cli) -> None:
    code, _, err = cli("api-keys", "create", "--name", "x", "--scopes", "schedules:delete")
    assert code == 2 and err.startswith("error: scopes:")
    code, _, err = cli("api-keys", "revoke", "key_nope")
    assert code == 2 and "not found" in err


def test_openapi_prints_the_document(cli) -> None:
    code, out, _ = cli("api", "openapi")
    assert code == 0 and json.loads(out)["info"]["title"] == "graph-runs management API"
