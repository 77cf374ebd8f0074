"""The approvals webhook: review tools post decisions to ``POST /webhooks/approvals``.

A delivery is trusted only if it is signed and fresh. The sender computes
``HMAC-SHA256(secret, f"{timestamp}.{delivery id}.{body}")`` over the raw body and sends it
as ``X-Graph-Runs-Signature: sha256=<hex>``, with the Unix time in
``X-Graph-Runs-Timestamp`` and its own unique id in ``X-Graph-Runs-Delivery``. Signing the
timestamp means an old delivery cannot be made fresh; signing the delivery id means a
captured delivery cannot spend another id; recording delivery ids means a fresh one cannot
be sent twice. Ids are kept for twice the timestamp tolerance, as long as a delivery
carrying them could still be fresh. The body is
``{"approval_id", "decision": "approve"|"reject", "by", "note"?}``.

Answers: 200 with the approval; 400 for a body that names a bad field; 401 for a bad or
missing signature or a timestamp more than 5 minutes off; 404 for an unknown approval;
409 for a replayed delivery id or an approval that is no longer pending (nothing changes);
413 for a body over 64 KiB, read no further than that (before authentication, a body is
the only thing an unauthenticated sender controls). The delivery id is recorded in the
decision's transaction, so a delivery is either acted on and remembered, or neither.
"""

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from graph_runs.approvals import decisions
from graph_runs.core.errors import Conflict, InvalidInput, NotFound
from graph_runs.http.bodies import body_within
from graph_runs.store.tables import webhook_deliveries

SIGNATURE_HEADER = "X-Graph-Runs-Signature"
TIMESTAMP_HEADER = "X-Graph-Runs-Timestamp"
DELIVERY_HEADER = "X-Graph-Runs-Delivery"
MAX_SKEW = dt.timedelta(minutes=5)
MAX_BODY_BYTES = 64 * 1024
MIN_SECRET_LENGTH = 16
# A delivery id is remembered while a delivery carrying it could still pass the timestamp
# check: its timestamp was at most MAX_SKEW from its receipt, and is judged against MAX_SKEW.
KEEP_DELIVERIES = 2 * MAX_SKEW


def sign(secret: str, timestamp: str, delivery_id: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (Unix seconds).

    Headers are bytes read as latin-1: encoding them back gives the bytes the sender
    signed (timestamps and delivery ids are ASCII).
    """
    signed = f"{timestamp}.{delivery_id}.".encode("latin-1", "replace") + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _signed(secret: str, timestamp: str, delivery_id: str, body: bytes, signature: str) -> bool:
    # Header values arrive as latin-1 text; compared as bytes, a header of any characters is
    # a mismatch (401), never a TypeError (500) before authentication.
    expected = sign(secret, timestamp, delivery_id, body).encode()
    return hmac.compare_digest(expected, signature.encode("latin-1", "replace"))


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status)


def _decision(body: bytes) -> dict[str, Any]:
    """The decision in a verified body; InvalidInput names the bad field."""
    try:
        data = json.loads(body)
    except ValueError:
        raise InvalidInput("body", "is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("body", "must be a JSON object")
    unknown = sorted(set(data) - {"approval_id", "decision", "by", "note"})
    if unknown:
        raise InvalidInput(unknown[0], "is not a field of an approval decision")
    for name in ("approval_id", "decision", "by"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise InvalidInput(name, "is required, as a string")
    if data.get("note") is not None and not isinstance(data["note"], str):
        raise InvalidInput("note", "must be a string")
    return data


def create_app(engine: sa.Engine, secret: str, clock: Callable[[], dt.datetime]) -> Starlette:
    """The webhook app; ``clock`` gives the time that timestamps are judged against."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise InvalidInput("webhook_secret", f"must be at least {MIN_SECRET_LENGTH} characters")

    def decide(delivery_id: str, data: dict[str, Any], now: dt.datetime) -> JSONResponse:
        try:
            with engine.begin() as conn:
                # Ids older than any delivery that could still be fresh protect nothing.
                conn.execute(
                    webhook_deliveries.delete().where(
                        webhook_deliveries.c.received_at < now - KEEP_DELIVERIES
                    )
                )
                # Inserted first: a concurrent replay waits on this key, then finds it taken.
                conn.execute(
                    webhook_deliveries.insert().values(
                        id=delivery_id,
                        received_at=now,
                        approval_id=data["approval_id"][:40],
                        decision=data["decision"][:20],
                    )
                )
                view = decisions.decide(
                    conn,
                    data["approval_id"],
                    data["decision"],
                    by=data["by"],
                    note=data.get("note"),
                    now=now,
                    source=f"webhook:{delivery_id}",
                )
        except sa.exc.IntegrityError:
            return _error(409, "replayed_delivery", f"delivery {delivery_id} was already received")
        except InvalidInput as exc:
            return _error(400, "invalid_input", str(exc), field=exc.field)
        except NotFound as exc:
            return _error(404, "not_found", str(exc))
        except Conflict as exc:
            return _error(409, "not_pending", str(exc))
        return JSONResponse({"approval": view})

    async def approvals_webhook(request: Request) -> JSONResponse:
        body = await body_within(request, MAX_BODY_BYTES)
        if body is None:
            return _error(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        delivery_id = request.headers.get(DELIVERY_HEADER, "")
        if not _signed(secret, timestamp, delivery_id, body, signature):
            return _error(401, "bad_signature", f"{SIGNATURE_HEADER} does not match the body")
        now = clock()
        try:
            sent = dt.datetime.fromtimestamp(int(timestamp), dt.UTC)
        except (ValueError, OverflowError, OSError):
            return _error(401, "bad_timestamp", f"{TIMESTAMP_HEADER} must be Unix seconds")
        if abs(now - sent) > MAX_SKEW:
            return _error(
                401, "stale_timestamp", f"{TIMESTAMP_HEADER} is more than 5 minutes from now"
            )
        if not 1 <= len(delivery_id) <= 200:
            return _error(400, "invalid_input", f"{DELIVERY_HEADER} is required", field="delivery")
        try:
            data = _decision(body)
        except InvalidInput as exc:
            return _error(400, "invalid_input", str(exc), field=exc.field)
        return await run_in_threadpool(decide, delivery_id, data, now)

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/webhooks/approvals", approvals_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
