"""``/v1/schedules``: create, upsert, read, change, delete, list and the slots of a schedule.

Each route does what its ``graph-runs schedules`` command does, through the same Python API,
in one transaction. PATCH and PUT need ``If-Match``: the check and the write happen under
the schedule's row lock, so of two editors holding one ETag exactly one wins.
"""

import datetime as dt
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from graph_runs.access.api_keys import ApiKey
from graph_runs.api.auth import check_new_owner, require
from graph_runs.api.bodies import json_body
from graph_runs.api.context import ApiContext, api_context
from graph_runs.api.idempotency import Answer, Idempotency, checked_key, fingerprint
from graph_runs.api.models import (
    DeleteOut,
    DescribeOut,
    PreviewOut,
    ScheduleOut,
    SchedulePage,
    SlotPage,
    UpsertOut,
    spec_schema,
)
from graph_runs.api.problems import ProblemError, answers
from graph_runs.api.routes.common import (
    body_doc,
    etag_of,
    foreign_owner,
    idempotency,
    matches,
    owned_schedule,
    respond,
    utc,
)
from graph_runs.core.errors import Conflict, InvalidInput
from graph_runs.core.schedule_spec import preview_fires, require_in_range, row_as_raw
from graph_runs.scheduling import listing
from graph_runs.scheduling import schedules as schedules_api
from graph_runs.scheduling.describe import describe_schedule
from graph_runs.scheduling.schedules import view

router = APIRouter(prefix="/v1", tags=["schedules"])

ScheduleId = Path(min_length=1, max_length=40, description="The schedule's id (sch_...)")
IdempotencyKey = Header(
    default=None,
    alias="Idempotency-Key",
    max_length=200,
    description="The same key with the same body within 24 h replays the first answer.",
)
IfMatch = Header(default=None, alias="If-Match", max_length=2000)
MAX_PREVIEW = 10_000

SPEC_EXAMPLE = {
    "owner": "alice",
    "external_id": "digest-42",
    "graph_id": "daily-digest",
    "input": {"topic": "news"},
    "cron": "0 9 * * 1-5",
    "timezone": "Europe/Berlin",
    "grant_id": "grt_0c5f1a8e2b9d4c7f8e6a5b4c3d2e1f00",
    "max_cost_usd": "0.50",
}


# The owner may be left out by an owner-scoped key, whose owner it then is.
SPEC_BODY = body_doc(spec_schema(partial=False, optional=("owner",)), SPEC_EXAMPLE)
UPSERT_BODY = body_doc(
    spec_schema(partial=False, optional=("owner", "external_id")),
    {k: v for k, v in SPEC_EXAMPLE.items() if k not in ("owner", "external_id")},
)
PATCH_BODY = body_doc(
    spec_schema(partial=True), {"cron": "30 9 * * 1-5"}, media="application/merge-patch+json"
)


def _with_etag(status: int, data: dict[str, Any], **headers: str) -> Answer:
    return Answer(status, data, {"ETag": etag_of(data), **headers})


@router.post(
    "/schedules",
    operation_id="createSchedule",
    summary="Create a schedule",
    status_code=201,
    response_model=ScheduleOut,
    responses=answers(403, 409, 413, 415, 422),
    openapi_extra=SPEC_BODY,
)
async def create_schedule(
    request: Request,
    key: ApiKey = Depends(require("schedules:write")),
    context: ApiContext = Depends(api_context),
    store: Idempotency = Depends(idempotency),
    idempotency_key: str | None = IdempotencyKey,
) -> JSONResponse:
    """Validate and store a schedule, exactly as ``graph-runs schedules create``."""
    data = await json_body(request)
    raw = {"owner": key.owner, **data} if key.owner is not None else data
    check_new_owner(key, raw.get("owner"))

    def work(conn: sa.Connection) -> Answer:
        created = schedules_api.create_schedule(
            conn, raw, limits=context.limits, now=context.clock(), actor=key.actor
        )
        return _with_etag(201, created, Location=f"/v1/schedules/{created['id']}")

    answer = await run_in_threadpool(
        store.run,
        key,
        checked_key(idempotency_key),
        fingerprint("POST", request.url.path, data),
        work,
    )
    return respond(answer)


@router.put(
    "/schedules/by-external-id/{owner}/{external_id}",
    operation_id="upsertSchedule",
    summary="Create or set the owner's schedule with this external id",
    response_model=UpsertOut,
    responses={201: {"model": UpsertOut, "description": "Created"}, **answers(403, 409, 413, 415)},
    openapi_extra=UPSERT_BODY,
)
async def upsert_schedule(
    request: Request,
    owner: str = Path(min_length=1, max_length=200),
    external_id: str = Path(min_length=1, max_length=200),
    key: ApiKey = Depends(require("schedules:write")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """The body is the whole desired spec: a field left out returns to its default.

    ``201`` when created, ``200`` when updated or unchanged; ``upsert`` says which.
    """
    data = await json_body(request)
    for name, value in (("owner", owner), ("external_id", external_id)):
        if name in data and data[name] != value:
            raise InvalidInput(name, f"differs from the path's {value!r}")
    check_new_owner(key, owner)
    raw = {**data, "owner": owner, "external_id": external_id}

    def work() -> Answer:
        for attempt in (1, 2):
            try:
                with context.engine.begin() as conn:
                    stored, outcome = schedules_api.upsert_schedule(
                        conn, raw, limits=context.limits, now=context.clock(), actor=key.actor
                    )
                break
            except Conflict:
                # Two PUTs of one new external id: the other created it between our read
                # and our insert. Once more, this one finds it and updates it in place.
                if attempt == 2:
                    raise
        status = 201 if outcome == "created" else 200
        return _with_etag(status, {**stored, "upsert": outcome})

    answer = await run_in_threadpool(work)
    if answer.status == 201:
        answer.headers["Location"] = f"/v1/schedules/{answer.body['id']}"
    return respond(answer)


@router.get(
    "/schedules/{schedule_id}",
    operation_id="getSchedule",
    summary="Read a schedule, with its ETag",
    response_model=ScheduleOut,
    responses=answers(),
)
async def get_schedule(
    schedule_id: str = ScheduleId,
    key: ApiKey = Depends(require("schedules:read")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """The schedule as ``schedules describe`` starts; its ETag is the one PATCH and PUT need."""

    def work(conn: sa.Connection) -> Answer:
        return _with_etag(200, view(owned_schedule(conn, key, schedule_id)))

    return respond(await run_in_threadpool(context.read, work))


@router.get(
    "/schedules/{schedule_id}/describe",
    operation_id="describeSchedule",
    summary="Describe a schedule: counts, runs in flight, last actions, next fire times",
    response_model=DescribeOut,
    responses=answers(),
)
async def describe(
    schedule_id: str = ScheduleId,
    key: ApiKey = Depends(require("schedules:read")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """What ``graph-runs schedules describe --json`` prints."""

    def work(conn: sa.Connection) -> dict[str, Any]:
        owned_schedule(conn, key, schedule_id)
        return describe_schedule(conn, schedule_id, now=context.clock())

    return JSONResponse(await run_in_threadpool(context.read, work))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge key by key, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = merge_patch(merged.get(name), value)
    return merged


def _edit(
    context: ApiContext,
    key: ApiKey,
    schedule_id: str,
    if_match: str | None,
    desired: Any,
) -> Answer:
    """Check If-Match under the row's lock, then set the schedule to ``desired(row)``."""
    if if_match is None:
        raise ProblemError(
            428,
            "precondition_required",
            "send If-Match with the ETag of a GET: an edit must not overwrite one unseen",
            field="If-Match",
        )
    with context.engine.begin() as conn:
        row = owned_schedule(conn, key, schedule_id, lock=True)
        if not matches(if_match, etag_of(view(row))):
            raise ProblemError(
                412,
                "precondition_failed",
                "the schedule changed since this ETag was read: GET it again",
                field="If-Match",
            )
        changed, _ = schedules_api.replace_schedule(
            conn,
            schedule_id,
            desired(row),
            limits=context.limits,
            now=context.clock(),
            actor=key.actor,
        )
    return _with_etag(200, changed)


@router.patch(
    "/schedules/{schedule_id}",
    operation_id="patchSchedule",
    summary="Change some fields of a schedule (JSON Merge Patch); needs If-Match",
    response_model=ScheduleOut,
    responses=answers(403, 409, 412, 413, 415, 428),
    openapi_extra=PATCH_BODY,
)
async def patch_schedule(
    request: Request,
    schedule_id: str = ScheduleId,
    if_match: str | None = IfMatch,
    key: ApiKey = Depends(require("schedules:write")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """``null`` returns a field to its default. A new cron clears run_at, and the reverse.

    Changing when it fires (cron, timezone, run_at, jitter, start_at) counts from now, as
    ``schedules update`` does.
    """
    patch = await json_body(request)

    def desired(row: Any) -> dict[str, Any]:
        raw = {k: v for k, v in row_as_raw(row).items() if v is not None}
        merged: dict[str, Any] = merge_patch(raw, patch)
        if patch.get("run_at") is not None and "cron" not in patch:
            merged.pop("cron", None)
        if patch.get("cron") is not None and "run_at" not in patch:
            merged.pop("run_at", None)
        return merged

    return respond(await run_in_threadpool(_edit, context, key, schedule_id, if_match, desired))


@router.put(
    "/schedules/{schedule_id}",
    operation_id="replaceSchedule",
    summary="Replace a schedule's whole spec; needs If-Match",
    response_model=ScheduleOut,
    responses=answers(403, 409, 412, 413, 415, 428),
    openapi_extra=SPEC_BODY,
)
async def replace_schedule(
    request: Request,
    schedule_id: str = ScheduleId,
    if_match: str | None = IfMatch,
    key: ApiKey = Depends(require("schedules:write")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """The body is the whole spec, as for an upsert; the owner cannot change."""
    data = await json_body(request)
    return respond(
        await run_in_threadpool(_edit, context, key, schedule_id, if_match, lambda _row: data)
    )


@router.delete(
    "/schedules/{schedule_id}",
    operation_id="deleteSchedule",
    summary="Delete a schedule (idempotent); its ledger and receipts stay",
    response_model=DeleteOut,
    responses=answers(403, 404, 412),
)
async def delete_schedule(
    schedule_id: str = ScheduleId,
    if_match: str | None = IfMatch,
    terminate: bool = Query(False, description="Also stop runs that have already started."),
    key: ApiKey = Depends(require("schedules:write")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """Deleting a deleted schedule again answers ``deleted: false`` and changes nothing.

    So a client whose first DELETE lost its answer may retry it. The deleted row stays (the
    ledger keeps its schedule), which is how a repeat is told from an id that never
    existed: that one, and another owner's schedule for an owner-scoped key, get ``404``.
    """

    def work() -> dict[str, Any]:
        with context.engine.begin() as conn:
            row = owned_schedule(conn, key, schedule_id, lock=True, deleted=True)
            if row.status == "deleted":
                return {"id": schedule_id, "deleted": False}
            if if_match is not None and not matches(if_match, etag_of(view(row))):
                raise ProblemError(
                    412, "precondition_failed", "the schedule changed since this ETag was read"
                )
            deleted = schedules_api.delete_schedule(
                conn, schedule_id, now=context.clock(), by=key.actor, terminate=terminate
            )
        return {"id": schedule_id, "deleted": deleted}

    return JSONResponse(await run_in_threadpool(work))


@router.get(
    "/schedules",
    operation_id="listSchedules",
    summary="List schedules, oldest first, a page at a time",
    response_model=SchedulePage,
    responses=answers(),
)
async def list_schedules(
    owner: str | None = Query(None, max_length=200),
    status: str | None = Query(None, max_length=20, description="active, completed or error"),
    graph_id: str | None = Query(None, max_length=200),
    external_id: str | None = Query(None, max_length=200),
    enabled: bool | None = Query(None, description="false: the paused ones"),
    limit: int = Query(100, ge=1, le=listing.MAX_PAGE),
    cursor: str | None = Query(None, max_length=1000, description="A page's next_cursor"),
    key: ApiKey = Depends(require("schedules:read")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """Each page ends where the next starts; rows added meanwhile are never shown twice."""
    if foreign_owner(key, owner):
        return JSONResponse({"items": [], "next_cursor": None})

    def work(conn: sa.Connection) -> listing.Page:
        return listing.page_schedules(
            conn,
            limit=limit,
            cursor=cursor,
            owner=key.owner or owner,
            status=status,
            graph_id=graph_id,
            external_id=external_id,
            enabled=enabled,
        )

    page = await run_in_threadpool(context.read, work)
    return JSONResponse({"items": page.items, "next_cursor": page.next_cursor})


@router.get(
    "/schedules/{schedule_id}/slots",
    operation_id="listSlots",
    summary="A schedule's slots, triggers and backfills, newest first, with costs",
    response_model=SlotPage,
    responses=answers(),
)
async def list_slots(
    schedule_id: str = ScheduleId,
    status: str | None = Query(None, max_length=20),
    start: dt.datetime | None = Query(None, alias="from", description="Written at or after"),
    end: dt.datetime | None = Query(None, alias="to", description="Written before"),
    limit: int = Query(100, ge=1, le=listing.MAX_PAGE),
    cursor: str | None = Query(None, max_length=1000),
    key: ApiKey = Depends(require("schedules:read")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """Each row: slot, trigger kind, status, reason, cost, tokens, API run, Dagster run."""
    bounds = [_utc(name, value) for name, value in (("from", start), ("to", end))]

    def work(conn: sa.Connection) -> listing.Page:
        owned_schedule(conn, key, schedule_id)
        return listing.page_slots(
            conn,
            schedule_id,
            limit=limit,
            cursor=cursor,
            status=status,
            start=bounds[0],
            end=bounds[1],
            dagster_ui_url=context.dagster_ui_url,
        )

    page = await run_in_threadpool(context.read, work)
    return JSONResponse({"items": page.items, "next_cursor": page.next_cursor})


def _utc(field: str, value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    aware = utc(value)
    require_in_range(field, aware)
    return aware


@router.get(
    "/preview",
    operation_id="previewCron",
    summary="The next fire instants of a cron expression in a time zone",
    response_model=PreviewOut,
    responses=answers(),
)
async def preview(
    cron: str = Query(max_length=200, examples=["0 9 * * 1-5"]),
    timezone: str = Query("UTC", max_length=64, examples=["Europe/Berlin"]),
    start: dt.datetime = Query(alias="from", description="Fires strictly after this instant"),
    count: int = Query(10, ge=1, le=MAX_PREVIEW),
    key: ApiKey = Depends(require("schedules:read")),
) -> JSONResponse:
    """What ``graph-runs schedules preview`` prints, under the daylight-saving policy."""
    after = _utc("from", start)
    assert after is not None
    return JSONResponse({"fires": preview_fires(cron, timezone, after, count)})
