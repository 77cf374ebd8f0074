"""Is graph-runs healthy? The signals of ``graph-runs status``, read from the ledger alone.

Every figure comes from the schedules database, so that the probe works wherever the
database is reachable, whatever Dagster's state: the due backlog (slots that should have
fired and have not), the oldest of them, the dispatch lag (due instant to the API request)
over the last hour, what did not run over the last day and why, approvals waiting,
schedules in ``error`` and accounts at their budget. ``Thresholds`` say which of them make
the whole unhealthy; each breach is named in ``problems``.
"""

import datetime as dt
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from graph_runs.core.cron import format_utc
from graph_runs.core.statuses import (
    AWAITING_APPROVAL,
    BUFFERED,
    CANCELLED,
    FAILED,
    MISSED,
    PENDING,
    SKIPPED_BUDGET,
    SKIPPED_OVERLAP,
    SKIPPED_PAUSED,
    SKIPPED_UNAPPROVED,
)
from graph_runs.money.budgets import exhausted_accounts
from graph_runs.store.tables import ACTIVE_SCHEDULE, api_keys, budgets, run_ledger, schedules

LAG_WINDOW = dt.timedelta(hours=1)
OUTCOME_WINDOW = dt.timedelta(hours=24)
# Statuses counted over the last day, by their error code (the reason).
NOT_RUN = (FAILED, MISSED, SKIPPED_OVERLAP, SKIPPED_PAUSED, SKIPPED_BUDGET, SKIPPED_UNAPPROVED)
NOT_RUN_OR_CANCELLED = (*NOT_RUN, CANCELLED)
# Most ids listed per signal: a probe's output stays readable with thousands in error.
MAX_IDS = 20


@dataclass(frozen=True)
class Thresholds:
    """What makes graph-runs unhealthy; ``None`` turns a check off.

    Attributes:
        grace_seconds: how late a slot may be and not count as backlog yet (a tick's
            interval and a dispatch run's start).
        max_backlog: most due slots not yet fired, beyond the grace.
        max_oldest_pending_seconds: oldest such slot's age.
        max_lag_p99_seconds: the last hour's 99th percentile of due instant to API request.
        max_failed_24h: most failed slots over the last day.
        max_missed_24h: most missed slots over the last day.
        max_schedules_in_error: most schedules in ``error``.
    """

    grace_seconds: int = 60
    max_backlog: int | None = 0
    max_oldest_pending_seconds: int | None = 300
    max_lag_p99_seconds: float | None = 60.0
    max_failed_24h: int | None = None
    max_missed_24h: int | None = 0
    max_schedules_in_error: int | None = 0


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return round(sorted_values[index], 3)


# When a claimed slot is due (rows from before due_at existed: when claimed).
_DUE = sa.func.coalesce(run_ledger.c.due_at, run_ledger.c.created_at)


def _late(now: dt.datetime, thresholds: Thresholds) -> tuple[Any, Any]:
    """Where-clauses of the backlog: claimed slots not fired, and due schedules not claimed.

    A schedule whose next slot is due and unclaimed means the sensor is behind, or stopped.
    """
    cutoff = now - dt.timedelta(seconds=thresholds.grace_seconds)
    claimed = sa.and_(run_ledger.c.status.in_([PENDING, BUFFERED]), _DUE <= cutoff)
    unclaimed = sa.and_(ACTIVE_SCHEDULE, schedules.c.next_run_at <= cutoff)
    return claimed, unclaimed


def backlog(conn: sa.Connection, now: dt.datetime, thresholds: Thresholds) -> dict[str, Any]:
    """Slots due past the grace that have not fired: claimed and waiting, or unclaimed."""
    claimed_late, unclaimed_late = _late(now, thresholds)
    claimed = conn.execute(sa.select(sa.func.count(), sa.func.min(_DUE)).where(claimed_late)).one()
    unclaimed = conn.execute(
        sa.select(sa.func.count(), sa.func.min(schedules.c.next_run_at)).where(unclaimed_late)
    ).one()
    oldest = min((t for t in (claimed[1], unclaimed[1]) if t is not None), default=None)
    return {
        "claimed_not_fired": claimed[0],
        "due_not_claimed": unclaimed[0],
        "total": claimed[0] + unclaimed[0],
        "oldest_due_at": format_utc(oldest) if oldest else None,
        "oldest_age_seconds": int((now - oldest).total_seconds()) if oldest else None,
    }


def lag(conn: sa.Connection, now: dt.datetime) -> dict[str, Any]:
    """Due instant to API request, for slots due in the last hour that fired."""
    query = sa.select(run_ledger.c.due_at, run_ledger.c.started_at).where(
        run_ledger.c.created_at >= now - LAG_WINDOW - dt.timedelta(minutes=5),
        run_ledger.c.due_at >= now - LAG_WINDOW,
        run_ledger.c.due_at <= now,
        run_ledger.c.started_at.is_not(None),
        run_ledger.c.trigger_kind == "scheduled",
    )
    lags = sorted(max(0.0, (s - d).total_seconds()) for d, s in conn.execute(query))
    return {
        "slots": len(lags),
        "p50_seconds": _percentile(lags, 0.5),
        "p99_seconds": _percentile(lags, 0.99),
    }


def _not_run(conn: sa.Connection, now: dt.datetime) -> dict[str, dict[str, int]]:
    """Over the last day: failed, missed, skipped and cancelled slots, by reason."""
    query = (
        sa.select(run_ledger.c.status, run_ledger.c.error_code, sa.func.count())
        .where(
            run_ledger.c.created_at >= now - OUTCOME_WINDOW,
            run_ledger.c.status.in_(NOT_RUN_OR_CANCELLED),
        )
        .group_by(run_ledger.c.status, run_ledger.c.error_code)
    )
    found: dict[str, Counter[str]] = {}
    for status, code, count in conn.execute(query):
        found.setdefault(status, Counter())[code or status] += count
    return {status: dict(sorted(codes.items())) for status, codes in sorted(found.items())}


def _approvals(conn: sa.Connection, now: dt.datetime) -> dict[str, Any]:
    count, oldest = conn.execute(
        sa.select(sa.func.count(), sa.func.min(run_ledger.c.created_at)).where(
            run_ledger.c.status == AWAITING_APPROVAL
        )
    ).one()
    return {
        "pending": count,
        "oldest_since": format_utc(oldest) if oldest else None,
        "oldest_age_seconds": int((now - oldest).total_seconds()) if oldest else None,
    }


def schedules_in_error(conn: sa.Connection) -> dict[str, Any]:
    """How many schedules are in ``error``, and the latest of their ids."""
    count = conn.execute(
        sa.select(sa.func.count()).select_from(schedules).where(schedules.c.status == "error")
    ).scalar_one()
    ids = conn.execute(
        sa.select(schedules.c.id)
        .where(schedules.c.status == "error")
        .order_by(schedules.c.updated_at.desc())
        .limit(MAX_IDS)
    ).scalars()
    return {"count": count, "ids": list(ids)}


# Failures that are graph-runs' own, not the graph's or a policy's: the machinery lost them.
LOST_CODES = ("dispatch_lost", "dagster_run_lost", "dagster_run_failed")


def unserved_schedules(conn: sa.Connection, now: dt.datetime) -> dict[str, int]:
    """Schedules with slots missed, or lost by the machinery, over the last hour: {id: slots}.

    What an alert names. Slots skipped by a policy (overlap, budget, a pause, no approval)
    are the schedule's choice, not a miss.
    """
    query = (
        sa.select(run_ledger.c.schedule_id, sa.func.count())
        .where(
            run_ledger.c.created_at >= now - LAG_WINDOW,
            run_ledger.c.schedule_id.is_not(None),
            sa.or_(
                run_ledger.c.status == MISSED,
                sa.and_(run_ledger.c.status == FAILED, run_ledger.c.error_code.in_(LOST_CODES)),
            ),
        )
        .group_by(run_ledger.c.schedule_id)
    )
    return {schedule_id: count for schedule_id, count in conn.execute(query)}


def late_schedules(conn: sa.Connection, now: dt.datetime, thresholds: Thresholds) -> list[str]:
    """Schedules with a slot due past the grace and not fired (claimed or not), oldest first."""
    claimed_late, unclaimed_late = _late(now, thresholds)
    claimed = conn.execute(
        sa.select(run_ledger.c.schedule_id, sa.func.min(_DUE).label("since"))
        .where(claimed_late, run_ledger.c.schedule_id.is_not(None))
        .group_by(run_ledger.c.schedule_id)
        .order_by(sa.func.min(_DUE))
        .limit(MAX_IDS)
    ).all()
    unclaimed = conn.execute(
        sa.select(schedules.c.id, schedules.c.next_run_at.label("since"))
        .where(unclaimed_late)
        .order_by(schedules.c.next_run_at)
        .limit(MAX_IDS)
    ).all()
    oldest: dict[str, dt.datetime] = {}
    for schedule_id, since in [*claimed, *unclaimed]:
        oldest[schedule_id] = min(since, oldest.get(schedule_id, since))
    return sorted(oldest, key=lambda k: (oldest[k], k))[:MAX_IDS]


def health(conn: sa.Connection, *, now: dt.datetime, thresholds: Thresholds) -> dict[str, Any]:
    """Every signal, the thresholds breached (``problems``) and ``healthy``."""
    waiting = backlog(conn, now, thresholds)
    lagged = lag(conn, now)
    not_run = _not_run(conn, now)
    in_error = schedules_in_error(conn)
    accounts = conn.execute(sa.select(budgets.c.billing_account).distinct()).scalars().all()
    at_budget = sorted(exhausted_accounts(conn, accounts, now))
    totals = {status: sum(codes.values()) for status, codes in not_run.items()}
    checks: list[tuple[str, float | None, float | None]] = [
        ("due backlog (slots)", waiting["total"], thresholds.max_backlog),
        (
            "oldest due slot not fired (s)",
            waiting["oldest_age_seconds"],
            thresholds.max_oldest_pending_seconds,
        ),
        (
            "dispatch lag p99 over the last hour (s)",
            lagged["p99_seconds"],
            thresholds.max_lag_p99_seconds,
        ),
        ("failed slots over the last day", totals.get(FAILED, 0), thresholds.max_failed_24h),
        ("missed slots over the last day", totals.get(MISSED, 0), thresholds.max_missed_24h),
        ("schedules in error", in_error["count"], thresholds.max_schedules_in_error),
    ]
    problems = [
        f"{name}: {value} > {limit}"
        for name, value, limit in checks
        if limit is not None and value is not None and value > limit
    ]
    keys = dict(
        conn.execute(
            sa.select(api_keys.c.revoked_at.is_(None), sa.func.count()).group_by(
                api_keys.c.revoked_at.is_(None)
            )
        ).all()
    )
    return {
        "at": format_utc(now),
        "healthy": not problems,
        "problems": problems,
        "backlog": waiting,
        "lag_last_hour": lagged,
        "not_run_last_24h": not_run,
        "approvals": _approvals(conn, now),
        "schedules_in_error": in_error,
        "accounts_at_budget": at_budget,
        "api_keys": {"live": keys.get(True, 0), "revoked": keys.get(False, 0)},
        "thresholds": asdict(thresholds),
    }
