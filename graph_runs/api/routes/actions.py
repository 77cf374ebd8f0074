"""A schedule's actions: pause, resume, trigger and backfill, each idempotent by its key.

A trigger's ``Idempotency-Key`` is also its run's request key, so the same key runs once
even after the 24 hours its answer is kept.
"""

from collections.abc import Callable
from typing import Any

import pydantic
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from graph_runs.access.api_keys import ApiKey
from graph_runs.api.auth import require
from graph_runs.api.bodies import json_body
from graph_runs.api.context import ApiContext, api_context
from graph_runs.api.idempotency import Answer, Idempotency, checked_key, fingerprint
from graph_runs.api.models import (
    BackfillIn,
    BackfillOut,
    PauseIn,
    ResumeIn,
    ScheduleOut,
    TriggerIn,
    TriggerOut,
)
from graph_runs.api.problems import answers
from graph_runs.api.routes.common import (
    body_doc,
    etag_of,
    idempotency,
    owned_schedule,
    respond,
    utc,
    validated,
    who,
)
from graph_runs.api.routes.schedules import IdempotencyKey, ScheduleId
from graph_runs.scheduling import schedules as schedules_api
from graph_runs.scheduling import triggers

router = APIRouter(prefix="/v1/schedules/{schedule_id}", tags=["schedule actions"])

Work = Callable[[sa.Connection, ApiKey, str, Any, ApiContext], Answer]


def _body(model: type[pydantic.BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    # An action's body is optional: an empty one takes the model's defaults.
    return body_doc(model, example, required=False)


async def _act(
    request: Request,
    schedule_id: str,
    key: ApiKey,
    context: ApiContext,
    store: Idempotency,
    idempotency_key: str | None,
    model: type[pydantic.BaseModel],
    work: Work,
) -> JSONResponse:
    data = await json_body(request, required=False)
    parsed = validated(model, data)
    checked = checked_key(idempotency_key)

    def run(conn: sa.Connection) -> Answer:
        owned_schedule(conn, key, schedule_id, lock=True)
        return work(conn, key, schedule_id, parsed, context)

    answer = await run_in_threadpool(
        store.run, key, checked, fingerprint("POST", request.url.path, data), run
    )
    return respond(answer)


def _schedule_answer(data: dict[str, Any]) -> Answer:
    return Answer(200, data, {"ETag": etag_of(data)})


def _pause(conn: sa.Connection, key: ApiKey, sid: str, body: Any, ctx: ApiContext) -> Answer:
    paused = schedules_api.pause_schedule(
        conn,
        sid,
        now=ctx.clock(),
        note=body.note,
        by=who(key, body.by),
        terminate=body.terminate,
    )
    return _schedule_answer(paused)


@router.post(
    "/pause",
    operation_id="pauseSchedule",
    summary="Pause a schedule; runs that have not started are cancelled",
    response_model=ScheduleOut,
    responses=answers(403, 409, 413, 415, 422),
    openapi_extra=_body(PauseIn, {"note": "holiday", "terminate": False}),
)
async def pause(
    request: Request,
    schedule_id: str = ScheduleId,
    key: ApiKey = Depends(require("schedules:write")),
    context: ApiContext = Depends(api_context),
    store: Idempotency = Depends(idempotency),
    idempotency_key: str | None = IdempotencyKey,
) -> JSONResponse:
    """A running run finishes unless ``terminate``. Pausing a paused schedule changes nothing."""
    return await _act(request, schedule_id, key, context, store, idempotency_key, PauseIn, _pause)


def _resume(conn: sa.Connection, key: ApiKey, sid: str, body: Any, ctx: ApiContext) -> Answer:
    resumed = schedules_api.resume_schedule(
        conn,
        sid,
        now=ctx.clock(),
        limits=ctx.limits,
        by=who(key, body.by),
    )
    return _schedule_answer(resumed)


@router.post(
    "/resume",
    operation_id="resumeSchedule",
    summary="Resume a schedule from now on",
    response_model=ScheduleOut,
    responses=answers(403, 409, 413, 415, 422),
    openapi_extra=_body(ResumeIn, {}),
)
async def resume(
    request: Request,
    schedule_id: str = ScheduleId,
    key: ApiKey = Depends(require("schedules:write")),
    context: ApiContext = Depends(api_context),
    store: Idempotency = Depends(idempotency),
    idempotency_key: str | None = IdempotencyKey,
) -> JSONResponse:
    """Slots that came due while paused are recorded ``skipped_paused``, not fired."""
    return await _act(request, schedule_id, key, context, store, idempotency_key, ResumeIn, _resume)


@router.post(
    "/trigger",
    operation_id="triggerSchedule",
    summary="Run the schedule's graph once, now",
    response_model=TriggerOut,
    responses=answers(403, 409, 413, 415, 422),
    openapi_extra=_body(TriggerIn, {"requested_by": "alice", "overlap": "allow_all"}),
)
async def trigger(
    request: Request,
    schedule_id: str = ScheduleId,
    key: ApiKey = Depends(require("schedules:write")),
    context: ApiContext = Depends(api_context),
    store: Idempotency = Depends(idempotency),
    idempotency_key: str | None = IdempotencyKey,
) -> JSONResponse:
    """The sensor starts the run on its next tick; ``created`` is false for a known key."""
    request_key = checked_key(idempotency_key)

    def work(conn: sa.Connection, key: ApiKey, sid: str, body: Any, ctx: ApiContext) -> Answer:
        result = triggers.trigger_schedule(
            conn,
            sid,
            now=ctx.clock(),
            requested_by=body.requested_by,
            request_key=None if request_key is None else f"{key.id}:{request_key}",
            overlap=body.overlap,
            source=key.actor,
            actor=key.actor,
        )
        return Answer(200, result)

    return await _act(request, schedule_id, key, context, store, idempotency_key, TriggerIn, work)


def _backfill(conn: sa.Connection, key: ApiKey, sid: str, body: Any, ctx: ApiContext) -> Answer:
    report = triggers.backfill_schedule(
        conn,
        sid,
        start=utc(body.from_),
        end=utc(body.to),
        now=ctx.clock(),
        limits=ctx.limits,
        overlap=body.overlap,
        requested_by=body.requested_by,
        source=key.actor,
        actor=key.actor,
    )
    return Answer(200, report)


@router.post(
    "/backfill",
    operation_id="backfillSchedule",
    summary="Run every slot in [from, to] that has not run yet, oldest first",
    response_model=BackfillOut,
    responses=answers(403, 409, 413, 415, 422),
    openapi_extra=_body(BackfillIn, {"from": "2026-12-01T00:00:00Z", "to": "2026-12-01T12:00:00Z"}),
)
async def backfill(
    request: Request,
    schedule_id: str = ScheduleId,
    key: ApiKey = Depends(require("schedules:write")),
    context: ApiContext = Depends(api_context),
    store: Idempotency = Depends(idempotency),
    idempotency_key: str | None = IdempotencyKey,
) -> JSONResponse:
    """At most 1,000 slots a call; a slot that already ran is reported, not run again."""
    return await _act(
        request, schedule_id, key, context, store, idempotency_key, BackfillIn, _backfill
    )
