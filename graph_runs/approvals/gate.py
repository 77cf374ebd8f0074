"""The approval gate's machinery: what the claim, the approvals sensor and pausing do.

``approvals`` is the people's side (list, approve, reject); this module is the rest of an
approval's life: opened when a gated slot comes due, timed out, launched once approved,
skipped when its account is at its budget, cancelled when its schedule stops.
"""

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from graph_runs.approvals.decisions import (
    APPROVED,
    CANCELLED,
    EXPIRED,
    PENDING,
    TIMEOUT_DECIDER,
    audit_decisions,
    locked,
)
from graph_runs.core import statuses
from graph_runs.core.ids import new_id
from graph_runs.core.statuses import AWAITING_APPROVAL, SKIPPED_BUDGET, SKIPPED_UNAPPROVED
from graph_runs.money.budgets import exhausted_accounts
from graph_runs.store import slot_status
from graph_runs.store.db import insert_ignoring_conflicts
from graph_runs.store.tables import APPROVED_APPROVAL, PENDING_APPROVAL, approvals, run_ledger


def open_approvals(
    conn: sa.Connection, gated: Iterable[tuple[dict[str, Any], Any]], now: dt.datetime
) -> int:
    """Write one pending approval per gated ledger row (given with its schedules row).

    Runs in the claim's transaction, after the ledger rows were inserted. A replayed claim
    inserted no ledger row, so each approval points at the row that is really there (looked up
    by idempotency key), and the unique ledger reference keeps it one approval per slot.
    """
    wanted = {
        ledger_row["idempotency_key"]: (ledger_row, schedule) for ledger_row, schedule in gated
    }
    if not wanted:
        return 0
    stored = {
        row.idempotency_key: row.id
        for row in conn.execute(
            sa.select(run_ledger.c.id, run_ledger.c.idempotency_key).where(
                run_ledger.c.idempotency_key.in_(sorted(wanted)),
                run_ledger.c.status == AWAITING_APPROVAL,
            )
        )
    }
    rows = []
    for key, ledger_id in stored.items():
        ledger_row, schedule = wanted[key]  # schedule: its schedules row
        rows.append(
            {
                "id": new_id("appr"),
                "graph_run_id": ledger_id,
                "schedule_id": ledger_row["schedule_id"],
                "scheduled_for": ledger_row["scheduled_for"],
                "graph_id": ledger_row["graph_id"],
                "input": ledger_row["input"],
                "grant_id": ledger_row["grant_id"],
                "owner": ledger_row["owner"],
                "billing_account": ledger_row["billing_account"],
                "status": PENDING,
                "on_timeout": schedule.on_approval_timeout or "skip",
                "created_at": now,
                "expires_at": now + dt.timedelta(seconds=schedule.approval_timeout_seconds),
            }
        )
    return insert_ignoring_conflicts(conn, approvals, rows)


def settle_timeouts(conn: sa.Connection, now: dt.datetime, limit: int) -> Counter[str]:
    """Apply on-timeout to pending approvals past their expiry; returns counts by outcome.

    ``skip`` expires the approval and records the slot ``skipped_unapproved``; ``approve``
    approves it in the name of ``TIMEOUT_DECIDER``, and the sensor launches it like any other.
    """
    due = list(
        conn.execute(
            locked(
                conn,
                sa.select(approvals)
                .where(PENDING_APPROVAL, approvals.c.expires_at <= now)
                .order_by(approvals.c.expires_at)
                .limit(limit),
                skip_locked=True,
            )
        )
    )
    outcomes: Counter[str] = Counter()
    entries: list[tuple[Any, str, str, str | None, str]] = []
    for on_timeout in ("skip", "approve"):
        rows = [row for row in due if (row.on_timeout or "skip") == on_timeout]
        if not rows:
            continue
        status = APPROVED if on_timeout == "approve" else EXPIRED
        ids = [row.id for row in rows]
        conn.execute(
            approvals.update()
            .where(approvals.c.id.in_(ids), PENDING_APPROVAL)
            .values(
                status=status,
                decided_by=TIMEOUT_DECIDER,
                decided_at=now,
                decision_note=f"no decision in time (on-timeout {on_timeout})",
            )
        )
        if on_timeout == "skip":
            slot_status.settle_awaiting(
                conn,
                [row.graph_run_id for row in rows],
                SKIPPED_UNAPPROVED,
                code="approval_timeout",
                message="nobody approved or rejected the slot before its approval timed out",
                now=now,
            )
        outcomes[status] += len(rows)
        entries += [
            (row, f"approval.timeout_{on_timeout}", TIMEOUT_DECIDER, None, "timeout")
            for row in rows
        ]
    audit_decisions(conn, entries, now)
    return outcomes


def to_launch(conn: sa.Connection, limit: int) -> list[tuple[Any, Any]]:
    """Approved approvals with no launched run yet, each with its ledger row, oldest first."""
    rows = list(
        conn.execute(
            sa.select(approvals)
            .where(APPROVED_APPROVAL)
            .order_by(approvals.c.decided_at)
            .limit(limit)
        )
    )
    if not rows:
        return []
    ledger = {
        row.id: row
        for row in conn.execute(
            sa.select(run_ledger).where(run_ledger.c.id.in_([r.graph_run_id for r in rows]))
        )
    }
    return [(row, ledger[row.graph_run_id]) for row in rows if row.graph_run_id in ledger]


def mark_launched(
    conn: sa.Connection, launched: dict[str, tuple[str, str]], now: dt.datetime
) -> None:
    """Record the Dagster run of each launched approval: {approval id: (ledger id, run id)}."""
    if not launched:
        return
    conn.execute(
        approvals.update()
        .where(approvals.c.id == sa.bindparam("b_id"), APPROVED_APPROVAL)
        .values(launched_at=sa.bindparam("b_now"), dagster_run_id=sa.bindparam("b_run")),
        [{"b_id": k, "b_run": run, "b_now": now} for k, (_, run) in launched.items()],
    )
    slot_status.launch_approved(conn, dict(launched.values()))


def skip_over_budget(
    conn: sa.Connection, candidates: list[tuple[Any, Any]], now: dt.datetime
) -> list[str]:
    """Settle approved slots whose account reached its budget since they came due.

    The budget is checked again at launch because a human may approve hours after the slot
    came due, when the month's spend is no longer what it was. Such a slot is recorded
    ``skipped_budget`` with the reason, never launched, and its approval keeps its decision.
    Returns the approval ids so settled.
    """
    blocked = exhausted_accounts(
        conn, {row.billing_account for _, row in candidates if row.billing_account}, now
    )
    skipped: list[str] = []
    # One pair of statements per blocked account (its reason), not one per slot.
    for account, reason in blocked.items():
        pairs = [
            (approval.id, row.id)
            for approval, row in candidates
            if row.billing_account == account and row.status == AWAITING_APPROVAL
        ]
        if not pairs:
            continue
        ledger_ids = [ledger_id for _, ledger_id in pairs]
        slot_status.settle_awaiting(
            conn, ledger_ids, SKIPPED_BUDGET, code=SKIPPED_BUDGET, message=reason, now=now
        )
        ids = [approval_id for approval_id, _ in pairs]
        conn.execute(
            approvals.update()
            .where(approvals.c.id.in_(ids), APPROVED_APPROVAL)
            .values(launched_at=now)
        )
        skipped += ids
    return skipped


def close_unlaunchable(conn: sa.Connection, approval_ids: list[str], now: dt.datetime) -> None:
    """Approved approvals whose slot was settled meanwhile (paused schedule): never launched."""
    if approval_ids:
        conn.execute(
            approvals.update()
            .where(approvals.c.id.in_(approval_ids), APPROVED_APPROVAL)
            .values(status=CANCELLED, launched_at=now)
        )


@dataclass
class Launches:
    """What one look at the approved approvals decided: runs to ask for, and the rest."""

    to_request: list[tuple[Any, Any]] = field(default_factory=list)  # (approval, ledger row)
    launched: int = 0  # found with a run already: marked launched
    closed: int = 0  # their slot was settled meanwhile (a paused schedule)
    over_budget: list[str] = field(default_factory=list)  # recorded skipped_budget


def plan_launches(
    conn: sa.Connection,
    candidates: list[tuple[Any, Any]],
    found: dict[str, str],
    now: dt.datetime,
) -> Launches:
    """Given ``to_launch``'s candidates and the runs Dagster has for them, decide each.

    ``found`` maps ledger ids to the run the sensor already asked for (tagged with the
    approval). Run in one transaction; the caller asks Dagster for ``to_request``'s runs,
    with the approval id as run key, so that asking twice still makes one run.
    """
    launched = {a.id: (row.id, found[row.id]) for a, row in candidates if row.id in found}
    closed = [
        a.id for a, row in candidates if row.id not in found and row.status != AWAITING_APPROVAL
    ]
    mark_launched(conn, launched, now)
    close_unlaunchable(conn, closed, now)
    over_budget = skip_over_budget(conn, [(a, r) for a, r in candidates if r.id not in found], now)
    skipped = set(over_budget)
    to_request = [
        (a, row)
        for a, row in candidates
        if row.id not in found and row.status == AWAITING_APPROVAL and a.id not in skipped
    ]
    return Launches(to_request, len(launched), len(closed), sorted(over_budget))


def cancel_awaiting(
    conn: sa.Connection, schedule_id: str, *, now: dt.datetime, code: str, message: str
) -> int:
    """Cancel a schedule's slots still waiting for approval (or for launch once approved).

    Pausing or deleting a schedule means none of its waiting slots should run; a reviewer
    who decides one later is told it is cancelled.
    """
    waiting = list(
        conn.execute(
            sa.select(run_ledger.c.id).where(
                run_ledger.c.schedule_id == schedule_id,
                run_ledger.c.status == AWAITING_APPROVAL,
            )
        ).scalars()
    )
    if not waiting:
        return 0
    slot_status.settle_awaiting(
        conn, waiting, statuses.CANCELLED, code=code, message=message, now=now
    )
    conn.execute(
        approvals.update()
        .where(
            approvals.c.graph_run_id.in_(waiting),
            approvals.c.status.in_([PENDING, APPROVED]),
            approvals.c.launched_at.is_(None),
        )
        .values(
            status=CANCELLED,
            decided_at=sa.func.coalesce(approvals.c.decided_at, now),
            decision_note=sa.func.coalesce(approvals.c.decision_note, message),
        )
    )
    return len(waiting)


def next_expiry(conn: sa.Connection) -> tuple[int, Any]:
    """How many approvals are pending, and the one that times out first (or None)."""
    pending = conn.execute(
        sa.select(sa.func.count()).select_from(approvals).where(PENDING_APPROVAL)
    ).scalar_one()
    first = conn.execute(
        sa.select(approvals.c.id, approvals.c.expires_at)
        .where(PENDING_APPROVAL)
        .order_by(approvals.c.expires_at)
        .limit(1)
    ).one_or_none()
    return pending, first
