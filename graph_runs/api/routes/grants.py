"""``/v1/grants`` and ``/v1/approvals``: execution grants, and slots waiting for a human.

Each does what its ``graph-runs grants`` or ``approvals`` command does. An owner-scoped key
sees and decides only its owner's.
"""

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from graph_runs.access import grants as grants_api
from graph_runs.access.api_keys import ApiKey
from graph_runs.api.auth import check_new_owner, check_owner, require
from graph_runs.api.bodies import json_body
from graph_runs.api.context import ApiContext, api_context
from graph_runs.api.idempotency import Answer, Idempotency, checked_key, fingerprint
from graph_runs.api.models import (
    ApprovalList,
    ApprovalOut,
    DecisionIn,
    GrantIn,
    GrantList,
    GrantOut,
    RevokedGrantOut,
)
from graph_runs.api.problems import answers
from graph_runs.api.routes.common import (
    body_doc,
    foreign_owner,
    idempotency,
    respond,
    utc,
    validated,
    who,
)
from graph_runs.api.routes.schedules import IdempotencyKey
from graph_runs.approvals import decisions
from graph_runs.core.errors import InvalidInput, NotFound
from graph_runs.scheduling.revocation import revoke_and_pause

router = APIRouter(prefix="/v1", tags=["grants and approvals"])

GrantId = Path(min_length=1, max_length=40)
ApprovalId = Path(min_length=1, max_length=40)


def _owned_grant(conn: sa.Connection, key: ApiKey, grant_id: str) -> grants_api.Grant:
    grant = grants_api.get_grant(conn, grant_id)
    if grant is None:
        raise NotFound(f"grant {grant_id} not found")
    check_owner(key, grant.owner, f"grant {grant_id}")
    return grant


@router.post(
    "/grants",
    operation_id="createGrant",
    summary="Create an execution grant",
    status_code=201,
    response_model=GrantOut,
    responses=answers(403, 409, 413, 415, 422),
    openapi_extra=body_doc(
        GrantIn,
        {"owner": "alice", "billing_account": "acme", "scopes": ["graph:execute:daily-digest"]},
    ),
)
async def create_grant(
    request: Request,
    key: ApiKey = Depends(require("grants:write")),
    context: ApiContext = Depends(api_context),
    store: Idempotency = Depends(idempotency),
    idempotency_key: str | None = IdempotencyKey,
) -> JSONResponse:
    """Scopes are ``graph:execute:<graph id>`` or ``graph:execute:*``."""
    data = await json_body(request)
    body = validated(GrantIn, data)
    owner = body.owner or key.owner
    if owner is None:
        raise InvalidInput("owner", "is required")
    check_new_owner(key, owner)

    def work(conn: sa.Connection) -> Answer:
        grant = grants_api.create_grant(
            conn,
            owner=owner,
            billing_account=body.billing_account,
            scopes=body.scopes,
            now=context.clock(),
            expires_at=None if body.expires_at is None else utc(body.expires_at),
            connection_ids=body.connection_ids,
            actor=key.actor,
        )
        return Answer(201, grant.as_dict(), {"Location": f"/v1/grants/{grant.id}"})

    answer = await run_in_threadpool(
        store.run,
        key,
        checked_key(idempotency_key),
        fingerprint("POST", request.url.path, data),
        work,
    )
    return respond(answer)


@router.get(
    "/grants",
    operation_id="listGrants",
    summary="List grants, oldest first",
    response_model=GrantList,
    responses=answers(403),
)
async def list_grants(
    owner: str | None = Query(None, max_length=200),
    key: ApiKey = Depends(require("schedules:read")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """An owner-scoped key lists its owner's only."""
    if foreign_owner(key, owner):
        return JSONResponse({"items": []})

    def work(conn: sa.Connection) -> list[dict[str, Any]]:
        return [g.as_dict() for g in grants_api.list_grants(conn, key.owner or owner)]

    return JSONResponse({"items": await run_in_threadpool(context.read, work)})


@router.get(
    "/grants/{grant_id}",
    operation_id="getGrant",
    summary="Read a grant",
    response_model=GrantOut,
    responses=answers(403),
)
async def get_grant(
    grant_id: str = GrantId,
    key: ApiKey = Depends(require("schedules:read")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """The grant, revoked or not."""

    def work(conn: sa.Connection) -> dict[str, Any]:
        return _owned_grant(conn, key, grant_id).as_dict()

    return JSONResponse(await run_in_threadpool(context.read, work))


@router.post(
    "/grants/{grant_id}/revoke",
    operation_id="revokeGrant",
    summary="Revoke a grant and pause its schedules",
    response_model=RevokedGrantOut,
    responses=answers(403, 409, 422),
)
async def revoke_grant(
    request: Request,
    grant_id: str = GrantId,
    key: ApiKey = Depends(require("grants:write")),
    context: ApiContext = Depends(api_context),
    store: Idempotency = Depends(idempotency),
    idempotency_key: str | None = IdempotencyKey,
) -> JSONResponse:
    """``paused_schedules`` counts the schedules it paused; revoking twice pauses nothing more."""

    def work(conn: sa.Connection) -> Answer:
        _owned_grant(conn, key, grant_id)
        grant, paused = revoke_and_pause(conn, grant_id, now=context.clock(), by=key.actor)
        return Answer(200, {**grant.as_dict(), "paused_schedules": paused})

    answer = await run_in_threadpool(
        store.run,
        key,
        checked_key(idempotency_key),
        fingerprint("POST", request.url.path, {}),
        work,
    )
    return respond(answer)


@router.get(
    "/approvals",
    operation_id="listApprovals",
    summary="List approvals, oldest first (pending ones by default)",
    response_model=ApprovalList,
    responses=answers(403),
)
async def list_approvals(
    status: str | None = Query("pending", max_length=20),
    schedule_id: str | None = Query(None, max_length=40),
    owner: str | None = Query(None, max_length=200),
    limit: int = Query(100, ge=1, le=decisions.MAX_LIST),
    key: ApiKey = Depends(require("schedules:read")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """What ``graph-runs approvals list`` shows."""
    if foreign_owner(key, owner):
        return JSONResponse({"items": []})

    def work(conn: sa.Connection) -> list[dict[str, Any]]:
        return decisions.list_approvals(
            conn,
            status=status,
            schedule_id=schedule_id,
            owner=key.owner or owner,
            limit=limit,
        )

    return JSONResponse({"items": await run_in_threadpool(context.read, work)})


@router.get(
    "/approvals/{approval_id}",
    operation_id="getApproval",
    summary="Read an approval",
    response_model=ApprovalOut,
    responses=answers(403),
)
async def get_approval(
    approval_id: str = ApprovalId,
    key: ApiKey = Depends(require("schedules:read")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """The approval and its slot's status."""

    def work(conn: sa.Connection) -> dict[str, Any]:
        approval = decisions.get_approval(conn, approval_id)
        check_owner(key, approval["owner"], f"approval {approval_id}")
        return approval

    return JSONResponse(await run_in_threadpool(context.read, work))


async def _decide(
    request: Request,
    approval_id: str,
    decision: decisions.Decision,
    key: ApiKey,
    context: ApiContext,
    store: Idempotency,
    idempotency_key: str | None,
) -> JSONResponse:
    data = await json_body(request, required=False)
    body = validated(DecisionIn, data)

    def work(conn: sa.Connection) -> Answer:
        check_owner(
            key, decisions.get_approval(conn, approval_id)["owner"], f"approval {approval_id}"
        )
        decided = decisions.decide(
            conn,
            approval_id,
            decision,
            by=who(key, body.by),
            note=body.note,
            now=context.clock(),
            source=key.actor,
        )
        return Answer(200, decided)

    answer = await run_in_threadpool(
        store.run,
        key,
        checked_key(idempotency_key),
        fingerprint("POST", request.url.path, data),
        work,
    )
    return respond(answer)


DECISION_DOC = body_doc(DecisionIn, {"by": "bob", "note": "looks right"})


@router.post(
    "/approvals/{approval_id}/approve",
    operation_id="approve",
    summary="Approve a pending approval: its slot runs",
    response_model=ApprovalOut,
    responses=answers(403, 409, 413, 415, 422),
    openapi_extra=DECISION_DOC,
)
async def approve(
    request: Request,
    approval_id: str = ApprovalId,
    key: ApiKey = Depends(require("approvals:write")),
    context: ApiContext = Depends(api_context),
    store: Idempotency = Depends(idempotency),
    idempotency_key: str | None = IdempotencyKey,
) -> JSONResponse:
    """409 when it is no longer pending: decided, timed out or cancelled."""
    return await _decide(request, approval_id, "approve", key, context, store, idempotency_key)


@router.post(
    "/approvals/{approval_id}/reject",
    operation_id="reject",
    summary="Reject a pending approval: its slot never runs",
    response_model=ApprovalOut,
    responses=answers(403, 409, 413, 415, 422),
    openapi_extra=DECISION_DOC,
)
async def reject(
    request: Request,
    approval_id: str = ApprovalId,
    key: ApiKey = Depends(require("approvals:write")),
    context: ApiContext = Depends(api_context),
    store: Idempotency = Depends(idempotency),
    idempotency_key: str | None = IdempotencyKey,
) -> JSONResponse:
    """409 when it is no longer pending."""
    return await _decide(request, approval_id, "reject", key, context, store, idempotency_key)
