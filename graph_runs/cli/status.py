"""``graph-runs status``: health as a probe; exit status 1 when a threshold is breached."""

from typing import Any

import click
import httpx

from graph_runs.cli.support import emit, json_option, now, transaction
from graph_runs.operations.health import Thresholds, health

_DEFAULTS = Thresholds()
PROBE_TIMEOUT_SECONDS = 5


def _limit(value: Any) -> Any:
    """A threshold option: a negative value turns the check off."""
    return None if value < 0 else value


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value} s"


def _human(data: dict[str, Any]) -> str:
    backlog, lag, approvals = data["backlog"], data["lag_last_hour"], data["approvals"]
    lines = [
        f"graph-runs at {data['at']}: {'healthy' if data['healthy'] else 'UNHEALTHY'}",
        *(f"  problem: {p}" for p in data["problems"]),
        f"  due backlog: {backlog['total']} ({backlog['claimed_not_fired']} claimed, "
        f"{backlog['due_not_claimed']} unclaimed); oldest due {backlog['oldest_due_at'] or '-'}",
        f"  dispatch lag, last hour: {lag['slots']} slot(s), p50 {_seconds(lag['p50_seconds'])}, "
        f"p99 {_seconds(lag['p99_seconds'])}",
    ]
    for status, reasons in data["not_run_last_24h"].items():
        detail = ", ".join(f"{code} {n}" for code, n in reasons.items())
        lines.append(f"  {status}, last 24 h: {sum(reasons.values())} ({detail})")
    oldest = approvals["oldest_since"] or "-"
    lines.append(f"  approvals pending: {approvals['pending']}; oldest since {oldest}")
    errors = data["schedules_in_error"]
    lines.append(f"  schedules in error: {errors['count']} {' '.join(errors['ids'])}".rstrip())
    lines.append(f"  accounts at budget: {', '.join(data['accounts_at_budget']) or 'none'}")
    keys = data["api_keys"]
    lines.append(f"  management API keys: {keys['live']} live, {keys['revoked']} revoked")
    api = data.get("management_api")
    if api is not None:
        state = "ready" if api["ready"] else "NOT READY: " + "; ".join(api["problems"])
        lines.append(f"  management API at {api['url']}: {state}")
    return "\n".join(lines)


def probe_api(url: str) -> dict[str, Any]:
    """The management API's /readyz, as ``status`` reports it."""
    try:
        answer = httpx.get(f"{url.rstrip('/')}/readyz", timeout=PROBE_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return {"url": url, "ready": False, "problems": [f"unreachable ({type(exc).__name__})"]}
    try:
        problems = list(answer.json().get("problems", []))
    except ValueError:
        problems = []
    ready = answer.status_code == 200
    if not ready and not problems:
        problems = [f"answered {answer.status_code}"]
    return {"url": url, "ready": ready, "problems": problems}


@click.command("status")
@click.option(
    "--grace",
    type=click.IntRange(min=0),
    default=_DEFAULTS.grace_seconds,
    show_default=True,
    help="Seconds a slot may be late before it is backlog.",
)
@click.option(
    "--max-backlog",
    type=int,
    default=_DEFAULTS.max_backlog,
    show_default=True,
    help="Most due slots not fired; -1: no limit.",
)
@click.option(
    "--max-oldest-pending",
    type=int,
    default=_DEFAULTS.max_oldest_pending_seconds,
    show_default=True,
    help="Oldest due slot not fired, seconds; -1: no limit.",
)
@click.option(
    "--max-lag-p99",
    type=float,
    default=_DEFAULTS.max_lag_p99_seconds,
    show_default=True,
    help="Last hour's p99 dispatch lag, seconds; -1: no limit.",
)
@click.option(
    "--max-failed",
    type=int,
    default=-1,
    show_default=True,
    help="Most failed slots over the last day; -1: no limit.",
)
@click.option(
    "--max-missed",
    type=int,
    default=_DEFAULTS.max_missed_24h,
    show_default=True,
    help="Most missed slots over the last day; -1: no limit.",
)
@click.option(
    "--max-in-error",
    type=int,
    default=_DEFAULTS.max_schedules_in_error,
    show_default=True,
    help="Most schedules in error; -1: no limit.",
)
@click.option(
    "--api-url",
    help="Also probe the management API's /readyz at this URL (http://127.0.0.1:8767).",
)
@json_option
def status(
    grace: int,
    max_backlog: int,
    max_oldest_pending: int,
    max_lag_p99: float,
    max_failed: int,
    max_missed: int,
    max_in_error: int,
    api_url: str | None,
    as_json: bool,
) -> None:
    """Health of the scheduler, from the schedules database; exit 1 when unhealthy."""
    thresholds = Thresholds(
        grace_seconds=grace,
        max_backlog=_limit(max_backlog),
        max_oldest_pending_seconds=_limit(max_oldest_pending),
        max_lag_p99_seconds=_limit(max_lag_p99),
        max_failed_24h=_limit(max_failed),
        max_missed_24h=_limit(max_missed),
        max_schedules_in_error=_limit(max_in_error),
    )
    with transaction() as conn:
        report = health(conn, now=now(), thresholds=thresholds)
    if api_url is not None:
        probed = probe_api(api_url)
        report["management_api"] = probed
        if not probed["ready"]:
            report["problems"].append(f"management API at {api_url}: not ready")
            report["healthy"] = False
    emit(as_json, report, _human)
    if not report["healthy"]:
        click.get_current_context().exit(1)
