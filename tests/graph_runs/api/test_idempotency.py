"""Idempotency-Key on POSTs, on SQLite and PostgreSQL.

Replays, reuse with another body, 20 concurrent requests with one key, a key held by a
request still going, and expiry.
"""

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from graph_runs.store.tables import api_idempotency, audit_log, run_ledger, schedules
from tests.graph_runs.api.conftest import Api


def _count(api: Api, table: sa.Table) -> int:
    with api.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_same_key_same_body_replays_the_first_answer(api: Api) -> None:
    client = api.client(api.app_token)
    headers = {"Idempotency-Key": "create-1"}
    first = client.post("/v1/schedules", json=api.spec(), headers=headers)
    again = client.post("/v1/schedules", json=api.spec(), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert _count(api, schedules) == 1


def test_same_key_other_body_is_422_and_writes_nothing(api: Api) -> None:
    client = api.client(api.app_token)
    headers = {"Idempotency-Key": "create-2"}
    client.post("/v1/schedules", json=api.spec(), headers=headers)
    other = client.post("/v1/schedules", json=api.spec(cron="0 7 * * *"), headers=headers)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert _count(api, schedules) == 1


def test_keys_are_per_api_key_and_refused_when_malformed(api: Api) -> None:
    headers = {"Idempotency-Key": "shared"}
    app_answer = api.client(api.app_token).post("/v1/schedules", json=api.spec(), headers=headers)
    alice_answer = api.client(api.alice_token).post(
        "/v1/schedules", json=api.spec(), headers=headers
    )
    assert app_answer.json()["id"] != alice_answer.json()["id"]
    bad = api.client(api.app_token).post(
        "/v1/schedules", json=api.spec(), headers={"Idempotency-Key": "x" * 201}
    )
    assert bad.status_code == 400 and bad.json()["field"] == "Idempotency-Key"


def test_a_refused_request_leaves_its_key_free(api: Api) -> None:
    client = api.client(api.app_token)
    headers = {"Idempotency-Key": "fix-then-retry"}
    refused = client.post("/v1/schedules", json=api.spec(cron="nope"), headers=headers)
    assert refused.status_code == 400
    fixed = client.post("/v1/schedules", json=api.spec(cron="nope"), headers=headers)
    assert fixed.status_code == 400  # still refused, not "replayed"
    assert _count(api, api_idempotency) == 0


def test_twenty_concurrent_posts_with_one_key_make_one_schedule(api: Api) -> None:
    answers: list[tuple[int, dict]] = []
    barrier = threading.Barrier(20)
    lock = threading.Lock()

    def post() -> None:
        client = api.client(api.app_token)
        barrier.wait(timeout=30)
        answer = client.post("/v1/schedules", json=api.spec(), headers={"Idempotency-Key": "burst"})
        with lock:
            answers.append((answer.status_code, answer.json()))

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 20
    assert {status for status, _ in answers} == {201}
    assert len({body["id"] for _, body in answers}) == 1
    assert _count(api, schedules) == 1
    with api.engine.connect() as conn:
        creates = conn.execute(
            sa.select(sa.func.count()).where(audit_log.c.action == "schedule.create")
        ).scalar_one()
    assert creates == 1


def test_trigger_key_runs_once_even_after_its_answer_expired(api: Api) -> None:
    client = api.client(api.app_token)
    sid = client.post("/v1/schedules", json=api.spec()).json()["id"]
    headers = {"Idempotency-Key": "trigger-9"}
    first = client.post(f"/v1/schedules/{sid}/trigger", headers=headers)
    assert first.json()["created"] is True
    api.clock.now += dt.timedelta(hours=25)
    later = client.post(f"/v1/schedules/{sid}/trigger", headers=headers)
    assert later.status_code == 200 and "idempotent-replayed" not in later.headers
    assert later.json()["created"] is False
    assert later.json()["ledger_id"] == first.json()["ledger_id"]
    assert _count(api, run_ledger) == 1


@pytest.mark.postgres
def test_a_key_still_held_by_another_request_is_409(api: Api) -> None:
    if api.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers: a second request waits, it cannot overlap")
    sid = api.client(api.app_token).post("/v1/schedules", json=api.spec()).json()["id"]
    key_id = api.app_token.split(".")[0]
    # A first request with this key, still in its transaction: it holds the key's row.
    with api.engine.connect() as holder:
        holder.begin()
        holder.execute(
            api_idempotency.insert().values(
                api_key_id=key_id,
                key="held",
                request_hash="-",
                status_code=0,
                body="",
                headers={},
                created_at=api.clock.now,
                expires_at=api.clock.now + dt.timedelta(hours=24),
            )
        )
        answer = api.client(api.app_token).post(
            f"/v1/schedules/{sid}/pause", headers={"Idempotency-Key": "held"}
        )
        holder.rollback()
    assert answer.status_code == 409
    assert answer.json()["code"] == "idempotency_key_in_use"
    assert answer.headers["retry-after"] == "1"
    # Released, the key serves the next request.
    retried = api.client(api.app_token).post(
        f"/v1/schedules/{sid}/pause", headers={"Idempotency-Key": "held"}
    )
    assert retried.status_code == 200 and retried.json()["enabled"] is False
