"""Bad input and outages over real HTTP.

Bad input gets one 4xx problem naming what is wrong, nothing written, never a 500; a
database outage gets 503 with Retry-After, and the server serves again once it is back.
"""

import logging
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from graph_runs.store.db import make_engine, upgrade
from graph_runs.store.tables import schedules
from tests.conftest import serving
from tests.e2e.faults import PrivatePostgres
from tests.graph_runs.api.conftest import Api, make_api

PROBLEM = "application/problem+json"


def _nothing_written(api: Api) -> None:
    with api.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schedules)).scalar_one() == 0


def test_a_body_over_64_kib_is_413_declared_or_chunked(api: Api) -> None:
    client = api.client(api.app_token)
    big = b'{"input": "' + b"x" * (70 * 1024) + b'"}'
    declared = client.post(
        "/v1/schedules", content=big, headers={"Content-Type": "application/json"}
    )
    assert declared.status_code == 413 and declared.headers["content-type"] == PROBLEM

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    chunked = client.post(
        "/v1/schedules", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    _nothing_written(api)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        (b"\xff\xfe{}", "application/json", 400, "body"),
        (b'{"input": {"x": NaN}}', "application/json", 400, "body"),
        (b'{"input": {"x": "a\\u0000b"}}', "application/json", 400, "body"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400, "body"),
        (b'{"a": ' * 40 + b"1" + b"}" * 40, "application/json", 400, "body"),
        (b"[1, 2]", "application/json", 400, "body"),
        (b"{not json", "application/json", 400, "body"),
        (b"owner=alice", "application/x-www-form-urlencoded", 415, None),
        (b"{}", "text/plain", 415, None),
    ],
)
def test_malformed_bodies_get_one_clear_4xx(
    api: Api, body: bytes, content_type: str, status: int, field: str | None
) -> None:
    answer = api.client(api.app_token).post(
        "/v1/schedules", content=body, headers={"Content-Type": content_type}
    )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json().get("field") == field
    _nothing_written(api)


def test_paths_queries_and_methods_out_of_bounds(api: Api) -> None:
    client = api.client(api.app_token)
    long_id = client.get("/v1/schedules/" + "s" * 41)
    assert long_id.status_code == 400 and long_id.json()["field"] == "schedule_id"
    assert client.get("/v1/nowhere").status_code == 404
    assert client.get("/v1/nowhere").headers["content-type"] == PROBLEM
    assert client.request("TRACE", "/v1/schedules").status_code == 405
    assert client.get("/v1/schedules", params={"enabled": "perhaps"}).json()["field"] == "enabled"
    out_of_range = client.get(
        "/v1/preview", params={"cron": "* * * * *", "from": "9999-12-31T23:59:00Z"}
    )
    assert out_of_range.status_code == 400 and out_of_range.json()["field"] == "from"


def test_health_needs_no_key(api: Api) -> None:
    client = api.client()
    assert client.get("/healthz").json() == {"ok": True, "problems": []}
    assert client.get("/readyz").json() == {"ok": True, "problems": []}


@pytest.mark.postgres
def test_a_database_outage_is_503_and_the_server_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = PrivatePostgres()
    try:
        url = cluster.create()
        engine = make_engine(url)
        upgrade(engine)
        app, _clock, token, _alice, _grants = make_api(engine)
        with serving(app) as base:
            client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
            assert client.get("/v1/schedules").status_code == 200
            cluster.stop()
            with caplog.at_level(logging.INFO):
                down = client.get("/v1/schedules")
                ready = client.get("/readyz")
                write = client.post("/v1/schedules", json={"owner": "alice"})
            assert down.status_code == 503 and down.headers["retry-after"] == "5"
            assert down.headers["content-type"] == PROBLEM
            assert ready.status_code == 503
            assert ready.json()["problems"] == ["the schedules database cannot be reached"]
            assert write.status_code == 503
            logged = "\n".join(r.getMessage() for r in caplog.records)
            for leak in ("Traceback", "SELECT", "psycopg2", token.split(".")[1]):
                assert leak not in logged
                assert leak not in down.text + ready.text
            cluster.start()
            assert client.get("/v1/schedules").status_code == 200
            assert client.get("/readyz").status_code == 200
            client.close()
        app.state.context.dispose()
        engine.dispose()
    finally:
        cluster.destroy()
