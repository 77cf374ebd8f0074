"""``graph-runs budgets`` and ``graph-runs billing``: spending limits and what was spent."""

from typing import Any

import click

from graph_runs.cli.support import decimal, emit, instant, json_option, now, transaction
from graph_runs.money.billing import spend_report
from graph_runs.money.budgets import PERIODS, list_budgets, set_budget


def _budget_line(b: dict[str, Any]) -> str:
    state = "REACHED" if b["reached"] else "ok"
    return (
        f"{b['billing_account']}  {b['period']} from {b['period_start']}: spent "
        f"{b['spent_usd']} of {b['limit_usd']} USD  {state}"
    )


@click.group()
def budgets() -> None:
    """Spending limits per billing account."""


@budgets.command("set")
@click.option("--billing-account", required=True)
@click.option("--period", type=click.Choice(PERIODS), default="month", show_default=True)
@click.option("--limit-usd", required=True)
@click.option("--by", default="cli", show_default=True, help="Who sets it (audited).")
@json_option
def budgets_set(billing_account: str, period: str, limit_usd: str, by: str, as_json: bool) -> None:
    """Set an account's limit; at it, due slots are skipped_budget until the period ends."""
    with transaction() as conn:
        view = set_budget(
            conn,
            billing_account=billing_account,
            period=period,
            limit_usd=decimal("limit_usd", limit_usd),
            now=now(),
            by=by,
        )
    emit(as_json, view, _budget_line)


@budgets.command("list")
@json_option
def budgets_list(as_json: bool) -> None:
    """Every budget with its spend in the current period."""
    with transaction() as conn:
        rows = list_budgets(conn, now())
    emit(as_json, rows, lambda d: "\n".join(_budget_line(b) for b in d) or "no budgets")


REPORT_SECTIONS = (("by_day", "day"), ("by_graph", "graph_id"), ("by_schedule", "schedule_id"))


@click.group()
def billing() -> None:
    """What billing accounts spent, from the charge receipts."""


def _report_text(report: dict[str, Any]) -> str:
    total = report["total"]
    lines = [
        f"{report['billing_account']} from {report['from']} to {report['to']}: "
        f"{total['cost_usd']} USD, {total['receipts']} receipt(s), "
        f"{total['total_tokens']} tokens, {total['over_budget_runs']} over budget"
    ]
    for section, key in REPORT_SECTIONS:
        lines.append(section.replace("_", " ") + ":")
        for group in report[section]:
            lines.append(
                f"  {group[key] or '(no schedule)'}  {group['cost_usd']} USD  "
                f"{group['receipts']} receipt(s)  {group['total_tokens']} tokens"
            )
    return "\n".join(lines)


@billing.command("report")
@click.option("--billing-account", required=True)
@click.option("--from", "start", help="ISO 8601 instant  [default: start of this month]")
@click.option("--to", "end", help="ISO 8601 instant, exclusive  [default: now]")
@json_option
def billing_report(billing_account: str, start: str | None, end: str | None, as_json: bool) -> None:
    """Spend by day, by graph and by schedule, summed from the receipts to the micro-dollar."""
    with transaction() as conn:
        report = spend_report(
            conn,
            billing_account,
            start=instant("from", start),
            end=instant("to", end),
            now=now(),
        )
    emit(as_json, report, _report_text)
