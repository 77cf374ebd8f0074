"""graph_runs.http.webhooks: signed approval decisions over real HTTP, on SQLite and PostgreSQL.

The Starlette app is served by uvicorn on a free loopback port; requests are signed the way a
review tool would sign them, with the clock the app judges timestamps by passed in.
"""

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from graph_runs import approvals
from graph_runs.errors import InvalidInput
from graph_runs.http.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    create_app,
    sign,
)
from graph_runs.tables import audit_log, webhook_deliveries
from tests.approval_helpers import gated, only_approval
from tests.conftest import serving
from tests.helpers import at

SECRET = "webhook-test-secret-0123456789"
NOW = at("2026-11-22T10:03:00Z")


@pytest.fixture
def approval_id(engine: sa.Engine) -> str:
    gated(engine)
    return str(only_approval(engine)["id"])


@pytest.fixture
def webhook(engine: sa.Engine) -> Iterator[str]:
    with serving(create_app(engine, SECRET, clock=lambda: NOW)) as url:
        yield f"{url}/webhooks/approvals"


def post(
    url: str,
    body: dict[str, Any] | bytes,
    *,
    delivery: str = "dlv-1",
    sent: dt.datetime = NOW,
    secret: str = SECRET,
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    timestamp = str(int(sent.timestamp()))
    headers = {
        SIGNATURE_HEADER: sign(secret, timestamp, raw),
        TIMESTAMP_HEADER: timestamp,
        DELIVERY_HEADER: delivery,
        "Content-Type": "application/json",
    }
    return httpx.post(url, content=raw, headers=headers, timeout=10)


def status_of(engine: sa.Engine, approval_id: str) -> str:
    with engine.connect() as conn:
        return str(approvals.get_approval(conn, approval_id)["status"])


def test_signed_approval_is_recorded_with_its_delivery_and_audited(
    engine: sa.Engine, webhook: str, approval_id: str
) -> None:
    body = {"approval_id": approval_id, "decision": "approve", "by": "reviewer@tool", "note": "ok"}
    response = post(webhook, body)
    assert response.status_code == 200, response.text
    approval = response.json()["approval"]
    assert (approval["status"], approval["decided_by"], approval["note"]) == (
        "approved",
        "reviewer@tool",
        "ok",
    )
    with engine.connect() as conn:
        (delivery,) = conn.execute(sa.select(webhook_deliveries)).all()
        (entry,) = conn.execute(
            sa.select(audit_log).where(audit_log.c.entity_id == approval_id)
        ).all()
    assert (delivery.id, delivery.approval_id, delivery.decision) == (
        "dlv-1",
        approval_id,
        "approve",
    )
    assert entry.detail["source"] == "webhook:dlv-1"


def test_bad_signature_is_401_and_changes_nothing(
    engine: sa.Engine, webhook: str, approval_id: str
) -> None:
    body = {"approval_id": approval_id, "decision": "approve", "by": "mallory"}
    wrong_key = post(webhook, body, secret="not-the-shared-secret-at-all")
    raw = json.dumps(body).encode()
    timestamp = str(int(NOW.timestamp()))
    tampered = httpx.post(
        webhook,
        content=raw.replace(b"mallory", b"alice!!"),
        headers={
            SIGNATURE_HEADER: sign(SECRET, timestamp, raw),
            TIMESTAMP_HEADER: timestamp,
            DELIVERY_HEADER: "dlv-2",
        },
    )
    unsigned = httpx.post(webhook, content=raw, headers={DELIVERY_HEADER: "dlv-3"})
    for response in (wrong_key, tampered, unsigned):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "bad_signature"
    assert status_of(engine, approval_id) == "pending"


@pytest.mark.parametrize("offset", [dt.timedelta(minutes=-5, seconds=-1), dt.timedelta(minutes=6)])
def test_timestamp_more_than_5_minutes_off_is_401(
    engine: sa.Engine, webhook: str, approval_id: str, offset: dt.timedelta
) -> None:
    body = {"approval_id": approval_id, "decision": "approve", "by": "bob"}
    response = post(webhook, body, sent=NOW + offset)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "stale_timestamp"
    assert status_of(engine, approval_id) == "pending"
    # Exactly 5 minutes old is still fresh.
    assert post(webhook, body, sent=NOW - dt.timedelta(minutes=5)).status_code == 200


def test_replayed_delivery_is_409(engine: sa.Engine, webhook: str, approval_id: str) -> None:
    body = {"approval_id": approval_id, "decision": "reject", "by": "bob"}
    assert post(webhook, body, delivery="dlv-7").status_code == 200
    replay = post(webhook, body, delivery="dlv-7")
    assert replay.status_code == 409
    assert replay.json()["error"]["code"] == "replayed_delivery"


def test_decision_on_a_decided_approval_is_409_and_changes_nothing(
    engine: sa.Engine, webhook: str, approval_id: str
) -> None:
    first = {"approval_id": approval_id, "decision": "approve", "by": "bob"}
    assert post(webhook, first, delivery="dlv-1").status_code == 200
    second = {"approval_id": approval_id, "decision": "reject", "by": "eve"}
    response = post(webhook, second, delivery="dlv-2")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_pending"
    with engine.connect() as conn:
        approval = approvals.get_approval(conn, approval_id)
        deliveries = conn.execute(sa.select(webhook_deliveries.c.id)).scalars().all()
    assert (approval["status"], approval["decided_by"]) == ("approved", "bob")
    assert deliveries == ["dlv-1"]  # the refused delivery left no trace either


def test_bad_bodies_name_the_field(engine: sa.Engine, webhook: str, approval_id: str) -> None:
    cases: list[tuple[dict[str, Any] | bytes, int, str | None]] = [
        (b"not json", 400, "body"),
        ({"approval_id": approval_id, "decision": "approve"}, 400, "by"),
        ({"approval_id": approval_id, "decision": "maybe", "by": "bob"}, 400, "decision"),
        ({"approval_id": approval_id, "decision": "approve", "by": "b", "extra": 1}, 400, "extra"),
        ({"approval_id": "appr_nope", "decision": "approve", "by": "bob"}, 404, None),
    ]
    for n, (body, code, field) in enumerate(cases):
        response = post(webhook, body, delivery=f"dlv-{n}")
        assert response.status_code == code, (body, response.text)
        assert response.json()["error"].get("field") == field
    assert status_of(engine, approval_id) == "pending"
    with engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(webhook_deliveries)).scalar() == 0
        )


def test_short_secret_is_refused(engine: sa.Engine) -> None:
    with pytest.raises(InvalidInput) as caught:
        create_app(engine, "short", clock=lambda: NOW)
    assert caught.value.field == "webhook_secret"
