"""What the routes share: answers, bodies read into models, owners checked, ETags."""

import datetime as dt
import hashlib
import json
from typing import Any, TypeVar

import pydantic
import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import JSONResponse

from graph_runs.access.api_keys import ApiKey
from graph_runs.api.auth import check_owner
from graph_runs.api.idempotency import Answer, Idempotency
from graph_runs.core.schedule_spec import first_error
from graph_runs.scheduling.schedules import schedule_row

M = TypeVar("M", bound=pydantic.BaseModel)

# What a schedule's ETag covers: what a client can change (its spec, its pause) and its
# status. Counts, the next fire time and the last error move as slots fire, and an edit
# made against them would fail for no reason a client could see.
MOVING_FIELDS = frozenset(
    {
        "next_run_at",
        "last_run_at",
        "runs_total",
        "runs_succeeded",
        "runs_failed",
        "consecutive_failures",
        "last_error",
    }
)


def respond(answer: Answer) -> JSONResponse:
    """The HTTP answer for ``answer``."""
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def validated(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``; InvalidInput names the first bad field, as the CLI would."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise first_error(exc, "body") from None


async def idempotency(request: Request) -> Idempotency:
    """The app's idempotency store (a FastAPI dependency)."""
    store: Idempotency = request.app.state.idempotency
    return store


def owned_schedule(
    conn: sa.Connection, key: ApiKey, schedule_id: str, *, lock: bool = False, deleted: bool = False
) -> Any:
    """The schedule's row, if this key may see it; NotFound as for a missing id otherwise.

    With ``deleted``, a deleted row is found too (``schedule_row``'s ``deleted``).
    """
    row = schedule_row(conn, schedule_id, lock=lock, deleted=deleted)
    check_owner(key, row.owner, f"schedule {schedule_id}")
    return row


def etag_of(view: dict[str, Any]) -> str:
    """A schedule's strong ETag (see ``MOVING_FIELDS`` for what it leaves out)."""
    covered = {k: v for k, v in view.items() if k not in MOVING_FIELDS}
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def matches(if_match: str, etag: str) -> bool:
    """RFC 9110's strong comparison of If-Match with the current ETag; ``*`` matches any."""
    tags = [t.strip() for t in if_match.split(",")]
    return "*" in tags or etag in tags


def who(key: ApiKey, given: str | None) -> str:
    """The actor an audit entry names: always the key, with the person the client named."""
    return key.actor if not given else f"{given} via {key.actor}"


def utc(value: dt.datetime) -> dt.datetime:
    """An instant in UTC; one without an offset is taken as UTC, as the CLI takes it."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def body_doc(
    body: type[pydantic.BaseModel] | dict[str, Any],
    example: dict[str, Any],
    *,
    media: str = "application/json",
    required: bool = True,
) -> dict[str, Any]:
    """The request body an operation documents: a model's schema (or the one given), an example.

    The routes read their bodies themselves (``bodies.json_body``), so FastAPI cannot.
    """
    if isinstance(body, dict):
        schema = body
    else:
        schema = body.model_json_schema()
        schema.pop("$defs", None)
    return {
        "requestBody": {
            "required": required,
            "content": {media: {"schema": schema, "example": example}},
        }
    }


def foreign_owner(key: ApiKey, owner: str | None) -> bool:
    """Whether a list filter names an owner an owner-scoped key may not see: an empty list."""
    return key.owner is not None and owner is not None and owner != key.owner
