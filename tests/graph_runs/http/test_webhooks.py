"""graph_runs.http.webhooks: signed approval decisions over real HTTP, on SQLite and PostgreSQL.

The Starlette app is served by uvicorn on a free loopback port; requests are signed the way a
review tool would sign them, with the clock the app judges timestamps by passed in. Raw
sockets send what a well-behaved client would not: an announced 400 MiB body, a chunked
body that never ends, a signature header of non-ASCII bytes.
"""

import datetime as dt
import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from graph_runs.approvals import decisions as approvals
from graph_runs.core.errors import InvalidInput
from graph_runs.http.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    create_app,
    sign,
)
from graph_runs.store.tables import audit_log, webhook_deliveries
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
        SIGNATURE_HEADER: sign(secret, timestamp, delivery, raw),
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
            SIGNATURE_HEADER: sign(SECRET, timestamp, "dlv-2", raw),
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


def _raw_exchange(url: str, head: bytes, body_parts: list[bytes]) -> bytes:
    """Send a request byte for byte, without finishing it, and read the first answer."""
    parsed = httpx.URL(url)
    with socket.create_connection((parsed.host, parsed.port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        return sock.recv(4096)


def test_an_oversized_body_is_refused_before_it_is_read_whole(webhook: str) -> None:
    path = httpx.URL(webhook).raw_path
    # 400 MiB announced, 1 KiB sent: the answer comes without waiting for the rest.
    declared = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 419430400\r\n\r\n"
    assert _raw_exchange(webhook, declared, [b"x" * 1024]).startswith(b"HTTP/1.1 413")
    # Chunked, no length: answered once just over 64 KiB has arrived, the body unfinished.
    chunked = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % (16 * 1024) + b"y" * (16 * 1024) + b"\r\n"
    assert _raw_exchange(webhook, chunked, [chunk] * 5).startswith(b"HTTP/1.1 413")


def test_the_delivery_id_is_signed_so_a_captured_delivery_spends_no_other_id(
    engine: sa.Engine, webhook: str, approval_id: str
) -> None:
    body = json.dumps({"approval_id": approval_id, "decision": "approve", "by": "bob"}).encode()
    timestamp = str(int(NOW.timestamp()))
    captured = sign(SECRET, timestamp, "dlv-100", body)
    respent = httpx.post(
        webhook,
        content=body,
        headers={
            SIGNATURE_HEADER: captured,
            TIMESTAMP_HEADER: timestamp,
            DELIVERY_HEADER: "dlv-101",
        },
    )
    assert respent.status_code == 401 and respent.json()["error"]["code"] == "bad_signature"
    assert status_of(engine, approval_id) == "pending"


def test_a_signature_header_of_any_bytes_is_a_401_not_a_500(webhook: str) -> None:
    response = httpx.post(
        webhook,
        content=b"{}",
        headers={SIGNATURE_HEADER.encode(): "sha256=\xe9\xff".encode("latin-1")},
    )
    assert response.status_code == 401 and response.json()["error"]["code"] == "bad_signature"


def test_delivery_ids_are_kept_while_they_could_be_replayed_and_pruned_after(
    engine: sa.Engine, approval_id: str
) -> None:
    clock = {"now": NOW}
    with serving(create_app(engine, SECRET, clock=lambda: clock["now"])) as url:
        hook = f"{url}/webhooks/approvals"
        missing = {"approval_id": "appr_nope", "decision": "approve", "by": "bob"}
        with engine.begin() as conn:  # two ids remembered from earlier deliveries
            for delivery, age in (("dlv-old", 11), ("dlv-recent", 9)):
                conn.execute(
                    webhook_deliveries.insert().values(
                        id=delivery, received_at=NOW - dt.timedelta(minutes=age),
                        approval_id="appr_x", decision="approve",
                    )
                )  # fmt: skip
        body = {"approval_id": approval_id, "decision": "approve", "by": "bob"}
        assert post(hook, body, delivery="dlv-new").status_code == 200
        assert post(hook, missing, delivery="dlv-recent").status_code == 409
    with engine.connect() as conn:
        kept = sorted(conn.execute(sa.select(webhook_deliveries.c.id)).scalars())
    assert kept == ["dlv-new", "dlv-recent"]
