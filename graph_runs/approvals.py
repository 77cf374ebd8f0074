"""The human approval gate: slots that wait for a person's yes or no before they run.

A schedule with ``requires_approval`` writes, for each slot that comes due, a ledger row in
``awaiting_approval`` and one approval here. A decision (CLI, Python API or webhook) is one
conditional update, so deciding twice can never count twice: the second decision finds the
approval no longer pending and changes nothing. A rejection settles the ledger row at once;
an approval is launched by ``graph_run_approvals_sensor``, whose run key is the approval id.

Approval statuses: ``pending``, ``approved``, ``rejected``, ``expired`` (timed out under
on-timeout skip) and ``cancelled`` (its schedule was paused or deleted first).
"""

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

import sqlalchemy as sa

from graph_runs.budgets import exhausted_accounts
from graph_runs.cron import format_utc
from graph_runs.db import insert_ignoring_conflicts
from graph_runs.errors import Conflict, InvalidInput, NotFound
from graph_runs.ids import new_id
from graph_runs.statuses import AWAITING_APPROVAL, REJECTED, SKIPPED_BUDGET, SKIPPED_UNAPPROVED
from graph_runs.tables import (
    APPROVED_APPROVAL,
    PENDING_APPROVAL,
    approvals,
    audit_log,
    graph_runs,
)

PENDING = "pending"
APPROVED = "approved"
DENIED = "rejected"
EXPIRED = "expired"
CANCELLED = "cancelled"
STATUSES = (PENDING, APPROVED, DENIED, EXPIRED, CANCELLED)

Decision = Literal["approve", "reject"]
DECISIONS: dict[str, str] = {"approve": APPROVED, "reject": DENIED}
# Who "decides" when nobody did in time; shown as approved_by on runs it let through.
TIMEOUT_DECIDER = "graph-runs (approval timeout)"
MAX_NOTE = 2000
MAX_LIST = 1000


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else format_utc(value)


def view(row: Any) -> dict[str, Any]:
    """A JSON-ready approval, with its ledger row's status when the query joined it."""
    data = {
        "id": row.id,
        "status": row.status,
        "schedule_id": row.schedule_id,
        "scheduled_for": _iso(row.scheduled_for),
        "graph_id": row.graph_id,
        "input": row.input,
        "owner": row.owner,
        "billing_account": row.billing_account,
        "grant_id": row.grant_id,
        "ledger_id": row.graph_run_id,
        "created_at": _iso(row.created_at),
        "expires_at": _iso(row.expires_at),
        "on_timeout": row.on_timeout,
        "decided_by": row.decided_by,
        "decided_at": _iso(row.decided_at),
        "note": row.decision_note,
        "dagster_run_id": row.dagster_run_id,
        "launched_at": _iso(row.launched_at),
    }
    if "run_status" in row._fields:
        data["run_status"] = row.run_status
    return data


def _with_run_status() -> sa.Select[Any]:
    return sa.select(approvals, graph_runs.c.status.label("run_status")).select_from(
        approvals.join(graph_runs, graph_runs.c.id == approvals.c.graph_run_id)
    )


def get_approval(conn: sa.Connection, approval_id: str) -> dict[str, Any]:
    """One approval's view; raises NotFound."""
    row = conn.execute(_with_run_status().where(approvals.c.id == approval_id)).one_or_none()
    if row is None:
        raise NotFound(f"approval {approval_id} not found")
    return view(row)


def list_approvals(
    conn: sa.Connection,
    *,
    status: str | None = None,
    schedule_id: str | None = None,
    owner: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Approvals, oldest first (the order a reviewer works through them)."""
    if status is not None and status not in STATUSES:
        raise InvalidInput("status", f"must be one of {', '.join(STATUSES)}, got {status!r}")
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput("limit", f"must be between 1 and {MAX_LIST}, got {limit}")
    query = _with_run_status()
    if status is not None:
        query = query.where(approvals.c.status == status)
    if schedule_id is not None:
        query = query.where(approvals.c.schedule_id == schedule_id)
    if owner is not None:
        query = query.where(approvals.c.owner == owner)
    query = query.order_by(approvals.c.created_at, approvals.c.scheduled_for).limit(limit)
    return [view(row) for row in conn.execute(query)]


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
            sa.select(graph_runs.c.id, graph_runs.c.idempotency_key).where(
                graph_runs.c.idempotency_key.in_(sorted(wanted)),
                graph_runs.c.status == AWAITING_APPROVAL,
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


def _locked(conn: sa.Connection, query: sa.Select[Any], *, skip_locked: bool = False) -> Any:
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=skip_locked)
    return query


def decide(
    conn: sa.Connection,
    approval_id: str,
    decision: Decision,
    *,
    by: str,
    note: str | None = None,
    now: dt.datetime,
    source: str = "api",
) -> dict[str, Any]:
    """Approve or reject a pending approval, in ``conn``'s transaction; returns its view.

    Raises InvalidInput for a bad decision, decider or note, NotFound for an unknown id, and
    Conflict when the approval is no longer pending (nothing is changed then). A rejection
    settles the slot ``rejected`` at once; an approval is launched by the approvals sensor.
    """
    if decision not in DECISIONS:
        raise InvalidInput("decision", f"must be approve or reject, got {decision!r}")
    by = (by or "").strip()
    if not by or len(by) > 200:
        raise InvalidInput("by", "must name who decides, in 1 to 200 characters")
    if note is not None and len(note) > MAX_NOTE:
        raise InvalidInput("note", f"is {len(note)} characters; the limit is {MAX_NOTE}")
    row = conn.execute(
        _locked(conn, sa.select(approvals).where(approvals.c.id == approval_id))
    ).one_or_none()
    if row is None:
        raise NotFound(f"approval {approval_id} not found")
    status = DECISIONS[decision]
    # The status condition makes the check and the change one step, even on SQLite.
    changed = conn.execute(
        approvals.update()
        .where(approvals.c.id == approval_id, PENDING_APPROVAL)
        .values(status=status, decided_by=by, decided_at=now, decision_note=note)
    ).rowcount
    if not changed:
        current = conn.execute(sa.select(approvals).where(approvals.c.id == approval_id)).one()
        decided = (
            f" by {current.decided_by} at {_iso(current.decided_at)}" if current.decided_by else ""
        )
        raise Conflict(
            f"approval {approval_id} is already {current.status}{decided}; nothing was changed"
        )
    if status == DENIED:
        reason = f"rejected by {by}" + (f": {note}" if note else "")
        _settle_slots(conn, [row.graph_run_id], REJECTED, "rejected", reason[:MAX_NOTE], now)
    _audit(conn, [(row, f"approval.{decision}", by, note, source)], now)
    return get_approval(conn, approval_id)


def approve(
    conn: sa.Connection, approval_id: str, *, by: str, note: str | None = None, now: dt.datetime
) -> dict[str, Any]:
    """Approve a pending approval; see ``decide``."""
    return decide(conn, approval_id, "approve", by=by, note=note, now=now)


def reject(
    conn: sa.Connection, approval_id: str, *, by: str, note: str | None = None, now: dt.datetime
) -> dict[str, Any]:
    """Reject a pending approval; see ``decide``."""
    return decide(conn, approval_id, "reject", by=by, note=note, now=now)


def is_approved(conn: sa.Connection, ledger_id: str) -> bool:
    """Whether the slot's approval says yes: what the op checks before running a gated slot."""
    status = conn.execute(
        sa.select(approvals.c.status).where(approvals.c.graph_run_id == ledger_id)
    ).scalar_one_or_none()
    return status == APPROVED


def settle_timeouts(conn: sa.Connection, now: dt.datetime, limit: int) -> Counter[str]:
    """Apply on-timeout to pending approvals past their expiry; returns counts by outcome.

    ``skip`` expires the approval and records the slot ``skipped_unapproved``; ``approve``
    approves it in the name of ``TIMEOUT_DECIDER``, and the sensor launches it like any other.
    """
    due = list(
        conn.execute(
            _locked(
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
                decision_note=sa.literal(f"no decision in time (on-timeout {on_timeout})"),
            )
        )
        if on_timeout == "skip":
            _settle_slots(
                conn,
                [row.graph_run_id for row in rows],
                SKIPPED_UNAPPROVED,
                "approval_timeout",
                "nobody approved or rejected the slot before its approval timed out",
                now,
            )
        outcomes[status] += len(rows)
        entries += [
            (row, f"approval.timeout_{on_timeout}", TIMEOUT_DECIDER, None, "timeout")
            for row in rows
        ]
    _audit(conn, entries, now)
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
            sa.select(graph_runs).where(graph_runs.c.id.in_([r.graph_run_id for r in rows]))
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
    conn.execute(
        graph_runs.update()
        .where(
            graph_runs.c.id == sa.bindparam("b_ledger"),
            graph_runs.c.status == AWAITING_APPROVAL,
        )
        .values(status="queued", dagster_run_id=sa.bindparam("b_run")),
        [{"b_ledger": ledger_id, "b_run": run} for ledger_id, run in launched.values()],
    )


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
    skipped = []
    for approval, row in candidates:
        reason = blocked.get(row.billing_account or "")
        if reason is None or row.status != AWAITING_APPROVAL:
            continue
        _settle_slots(conn, [row.id], SKIPPED_BUDGET, SKIPPED_BUDGET, reason, now)
        conn.execute(
            approvals.update()
            .where(approvals.c.id == approval.id, APPROVED_APPROVAL)
            .values(launched_at=now)
        )
        skipped.append(approval.id)
    return skipped


def close_unlaunchable(conn: sa.Connection, approval_ids: list[str], now: dt.datetime) -> None:
    """Approved approvals whose slot was settled meanwhile (paused schedule): never launched."""
    if approval_ids:
        conn.execute(
            approvals.update()
            .where(approvals.c.id.in_(approval_ids), APPROVED_APPROVAL)
            .values(status=CANCELLED, launched_at=now)
        )


def cancel_awaiting(
    conn: sa.Connection, schedule_id: str, *, now: dt.datetime, code: str, message: str
) -> int:
    """Cancel a schedule's slots still waiting for approval (or for launch once approved).

    Pausing or deleting a schedule means none of its waiting slots should run; a reviewer
    who decides one later is told it is cancelled.
    """
    waiting = list(
        conn.execute(
            sa.select(graph_runs.c.id).where(
                graph_runs.c.schedule_id == schedule_id,
                graph_runs.c.status == AWAITING_APPROVAL,
            )
        ).scalars()
    )
    if not waiting:
        return 0
    _settle_slots(conn, waiting, "cancelled", code, message, now)
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


def _settle_slots(
    conn: sa.Connection,
    ledger_ids: list[str],
    status: str,
    code: str,
    message: str,
    now: dt.datetime,
) -> None:
    conn.execute(
        graph_runs.update()
        .where(graph_runs.c.id.in_(ledger_ids), graph_runs.c.status == AWAITING_APPROVAL)
        .values(status=status, error_code=code, error_message=message, finished_at=now)
    )


def _audit(
    conn: sa.Connection,
    entries: list[tuple[Any, str, str, str | None, str]],
    now: dt.datetime,
) -> None:
    """One audit row per decision, in one statement."""
    if not entries:
        return
    conn.execute(
        audit_log.insert(),
        [
            {
                "at": now,
                "actor": actor,
                "action": action,
                "entity_type": "approval",
                "entity_id": row.id,
                "detail": {
                    "note": note,
                    "source": source,
                    "schedule_id": row.schedule_id,
                    "scheduled_for": _iso(row.scheduled_for),
                    "ledger_id": row.graph_run_id,
                },
            }
            for row, action, actor, note, source in entries
        ],
    )
