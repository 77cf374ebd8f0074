"""Budgets per billing account: once a period's spend reaches the limit, slots are skipped.

Spend is the sum of the charge receipts of the account in the current period, computed in
the database. A slot that comes due while its account is at or over its limit is recorded
``skipped_budget`` with no API call, until the period rolls over or the limit is raised.
"""

import datetime as dt
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from graph_runs.core.cron import format_utc
from graph_runs.core.errors import InvalidInput
from graph_runs.core.money import micros_to_usd, usd_to_micros
from graph_runs.store.db import insert_ignoring_conflicts
from graph_runs.store.tables import audit, budgets, charge_receipts

PERIODS = ("month",)


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """The start of the current period in UTC: a calendar month starts on its first day."""
    if period != "month":
        raise InvalidInput("period", f"{period!r} is not one of {', '.join(PERIODS)}")
    return now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


# A month's limit far beyond real spend, and within what micro-dollars in a BIGINT carry.
MAX_BUDGET_USD = Decimal(1_000_000_000)


def set_budget(
    conn: sa.Connection,
    *,
    billing_account: str,
    period: str,
    limit_usd: Decimal,
    now: dt.datetime,
    by: str = "cli",
) -> dict[str, Any]:
    """Create or change an account's limit for a period; returns the budget's view."""
    period_start(period, now)  # validates the period
    if not billing_account:
        raise InvalidInput("billing_account", "is required")
    if limit_usd < 0:
        raise InvalidInput("limit_usd", "must be zero or more")
    if limit_usd > MAX_BUDGET_USD:
        raise InvalidInput("limit_usd", f"must be at most {MAX_BUDGET_USD} USD")
    values = {
        "billing_account": billing_account,
        "period": period,
        "limit_micros": usd_to_micros(limit_usd),
        "updated_at": now,
        "updated_by": by,
    }
    if not insert_ignoring_conflicts(conn, budgets, [values]):
        conn.execute(
            budgets.update()
            .where(budgets.c.billing_account == billing_account, budgets.c.period == period)
            .values(**values)
        )
    audit(
        conn,
        at=now,
        actor=by,
        action="budget.set",
        entity_type="budget",
        entity_id=billing_account[:40],
        detail={"period": period, "limit_usd": str(limit_usd)},
    )
    (view,) = budget_status(conn, [billing_account], now).values()
    return view


def budget_status(
    conn: sa.Connection, accounts: Iterable[str], now: dt.datetime
) -> dict[str, dict[str, Any]]:
    """Limit and spend in the current period of each account that has a budget.

    One query for the budgets, one grouped sum for the spend, whatever the number of
    accounts.
    """
    names = sorted(set(accounts))
    if not names:
        return {}
    rows = list(conn.execute(sa.select(budgets).where(budgets.c.billing_account.in_(names))))
    if not rows:
        return {}
    start = period_start("month", now)
    spent = dict(
        conn.execute(
            sa.select(charge_receipts.c.billing_account, sa.func.sum(charge_receipts.c.cost_micros))
            .where(
                charge_receipts.c.billing_account.in_([r.billing_account for r in rows]),
                charge_receipts.c.created_at >= start,
            )
            .group_by(charge_receipts.c.billing_account)
        ).all()
    )
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        used = int(spent.get(row.billing_account) or 0)
        out[row.billing_account] = {
            "billing_account": row.billing_account,
            "period": row.period,
            "period_start": format_utc(start),
            "limit_usd": str(micros_to_usd(row.limit_micros)),
            "spent_usd": str(micros_to_usd(used)),
            "reached": used >= row.limit_micros,
            "updated_by": row.updated_by,
        }
    return out


def exhausted_accounts(
    conn: sa.Connection, accounts: Iterable[str], now: dt.datetime
) -> dict[str, str]:
    """The accounts whose spend reached their limit, each with the reason slots record."""
    return {
        account: (
            f"billing account {account} has spent {view['spent_usd']} USD of its "
            f"{view['limit_usd']} USD budget for the {view['period']} from "
            f"{view['period_start']}"
        )
        for account, view in budget_status(conn, accounts, now).items()
        if view["reached"]
    }


def list_budgets(conn: sa.Connection, now: dt.datetime) -> list[dict[str, Any]]:
    """Every budget with its current spend."""
    accounts = conn.execute(sa.select(budgets.c.billing_account)).scalars()
    return sorted(budget_status(conn, accounts, now).values(), key=lambda v: v["billing_account"])
