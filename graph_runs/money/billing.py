"""The billing report: an account's spend by day, by graph and by schedule.

Every figure is a SUM over the charge receipts, computed in the database in integer
micro-dollars, so the report adds up to exactly what the receipts say; dollars are printed
exactly (up to six decimals), never rounded to the cent.
"""

import datetime as dt
from typing import Any

import sqlalchemy as sa

from graph_runs.core.cron import format_utc
from graph_runs.core.errors import InvalidInput
from graph_runs.core.money import micros_to_usd
from graph_runs.money.budgets import period_start
from graph_runs.store.tables import charge_receipts, run_ledger


def _day(conn: sa.Connection) -> sa.ColumnElement[Any]:
    """The receipt's UTC calendar day as YYYY-MM-DD, whatever the session's time zone."""
    created = charge_receipts.c.created_at
    if conn.dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", created), "YYYY-MM-DD")
    return sa.func.strftime("%Y-%m-%d", created)  # SQLite stores naive UTC


def _figures(row: Any) -> dict[str, Any]:
    """One line of the report from a row of the measures: the total, or one group."""
    return {
        "cost_usd": str(micros_to_usd(int(row.cost))),
        "receipts": row.receipts,
        "total_tokens": int(row.tokens),
        "over_budget_runs": int(row.over_budget),
    }


def spend_report(
    conn: sa.Connection,
    billing_account: str,
    *,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    now: dt.datetime,
) -> dict[str, Any]:
    """Spend of ``billing_account`` in [start, end); by default the current month so far.

    Raises InvalidInput naming ``billing_account``, ``from`` or ``to``.
    """
    if not billing_account:
        raise InvalidInput("billing_account", "is required")
    start = start or period_start("month", now)
    end = end or now
    if end <= start:
        raise InvalidInput("to", f"{format_utc(end)} is not after from ({format_utc(start)})")
    in_range = (
        charge_receipts.c.billing_account == billing_account,
        charge_receipts.c.created_at >= start,
        charge_receipts.c.created_at < end,
    )
    over = sa.func.sum(sa.case((run_ledger.c.over_budget, 1), else_=0))
    measures = (
        sa.func.count().label("receipts"),
        sa.func.coalesce(sa.func.sum(charge_receipts.c.cost_micros), 0).label("cost"),
        sa.func.coalesce(sa.func.sum(charge_receipts.c.total_tokens), 0).label("tokens"),
        sa.func.coalesce(over, 0).label("over_budget"),
    )
    joined = charge_receipts.outerjoin(
        run_ledger, run_ledger.c.id == charge_receipts.c.graph_run_id
    )

    def grouped(key: sa.ColumnElement[Any], name: str) -> list[dict[str, Any]]:
        query = (
            sa.select(key.label("key"), *measures)
            .select_from(joined)
            .where(*in_range)
            .group_by(key)
            .order_by(key)
        )
        return [{name: row.key, **_figures(row)} for row in conn.execute(query)]

    total = conn.execute(sa.select(*measures).select_from(joined).where(*in_range)).one()
    return {
        "billing_account": billing_account,
        "from": format_utc(start),
        "to": format_utc(end),
        "total": _figures(total),
        "by_day": grouped(_day(conn), "day"),
        "by_graph": grouped(charge_receipts.c.graph_id, "graph_id"),
        # schedule_id None: runs outside any schedule (GraphQL, launchpad).
        "by_schedule": grouped(charge_receipts.c.schedule_id, "schedule_id"),
    }
