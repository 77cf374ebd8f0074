"""``/v1/budgets`` and ``/v1/billing/spend``: limits per billing account, and what was spent.

An owner-scoped key sees only the accounts its owner's grants charge, and may not set a
budget: a budget is the operator's brake on an account, which several owners may share.
"""

import datetime as dt
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from graph_runs.access.api_keys import ApiKey
from graph_runs.api.auth import require
from graph_runs.api.bodies import json_body
from graph_runs.api.context import ApiContext, api_context
from graph_runs.api.models import BudgetIn, BudgetList, BudgetOut, SpendOut
from graph_runs.api.problems import ProblemError, answers
from graph_runs.api.routes.common import body_doc, utc, validated
from graph_runs.core.errors import NotFound
from graph_runs.money.billing import spend_report
from graph_runs.money.budgets import list_budgets, set_budget
from graph_runs.store.tables import execution_grants

router = APIRouter(prefix="/v1", tags=["billing"])
Account = Path(min_length=1, max_length=200)


def _accounts(conn: sa.Connection, owner: str) -> set[str]:
    return set(
        conn.execute(
            sa.select(execution_grants.c.billing_account)
            .where(execution_grants.c.owner == owner)
            .distinct()
        ).scalars()
    )


def _check_account(conn: sa.Connection, key: ApiKey, account: str) -> None:
    if key.owner is not None and account not in _accounts(conn, key.owner):
        raise NotFound(f"billing account {account} not found")


@router.get(
    "/budgets",
    operation_id="listBudgets",
    summary="Every budget, with its spend this period",
    response_model=BudgetList,
    responses=answers(403),
)
async def budgets(
    key: ApiKey = Depends(require("billing:read")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """What ``graph-runs budgets list`` shows."""

    def work(conn: sa.Connection) -> list[dict[str, Any]]:
        found = list_budgets(conn, context.clock())
        if key.owner is None:
            return found
        mine = _accounts(conn, key.owner)
        return [b for b in found if b["billing_account"] in mine]

    return JSONResponse({"items": await run_in_threadpool(context.read, work)})


@router.put(
    "/budgets/{billing_account}",
    operation_id="setBudget",
    summary="Set a billing account's limit for a period",
    response_model=BudgetOut,
    responses=answers(403, 413, 415),
    openapi_extra=body_doc(BudgetIn, {"limit_usd": "250.00", "period": "month"}),
)
async def put_budget(
    request: Request,
    billing_account: str = Account,
    key: ApiKey = Depends(require("billing:write")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """Slots of an account at its limit are recorded ``skipped_budget`` and never call the API."""
    if key.owner is not None:
        raise ProblemError(403, "forbidden", "an owner-scoped key cannot set budgets")
    body = validated(BudgetIn, await json_body(request))

    def work() -> dict[str, Any]:
        with context.engine.begin() as conn:
            return set_budget(
                conn,
                billing_account=billing_account,
                period=body.period,
                limit_usd=body.limit_usd,
                now=context.clock(),
                by=key.actor,
            )

    return JSONResponse(await run_in_threadpool(work))


@router.get(
    "/billing/spend",
    operation_id="spendReport",
    summary="A billing account's spend: total, by day, by graph, by schedule",
    response_model=SpendOut,
    responses=answers(403),
)
async def spend(
    billing_account: str = Query(min_length=1, max_length=200),
    start: dt.datetime | None = Query(None, alias="from", description="Default: the month's start"),
    end: dt.datetime | None = Query(None, alias="to", description="Default: now"),
    key: ApiKey = Depends(require("billing:read")),
    context: ApiContext = Depends(api_context),
) -> JSONResponse:
    """What ``graph-runs billing report --json`` prints; [from, to)."""

    def work(conn: sa.Connection) -> dict[str, Any]:
        _check_account(conn, key, billing_account)
        return spend_report(
            conn,
            billing_account,
            start=None if start is None else utc(start),
            end=None if end is None else utc(end),
            now=context.clock(),
        )

    return JSONResponse(await run_in_threadpool(context.read, work))
