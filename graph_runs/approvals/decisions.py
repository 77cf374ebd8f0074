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
from typing import Any, Literal

import sqlalchemy as sa

from graph_runs.core.cron import format_utc_or_none
from graph_runs.core.errors import Conflict, InvalidInput, NotFound
from graph_runs.core.statuses import REJECTED
from graph_runs.store import slot_status
from graph_runs.store.tables import (
    PENDING_APPROVAL,
    approvals,
    audit_log,
    run_ledger,
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


def view(row: Any) -> dict[str, Any]:
    """A JSON-ready approval, with its ledger row's status (``run_status``)."""
    return {
        "id": row.id,
        "status": row.status,
        "schedule_id": row.schedule_id,
        "scheduled_for": format_utc_or_none(row.scheduled_for),
        "graph_id": row.graph_id,
        "input": row.input,
        "owner": row.owner,
        "billing_account": row.billing_account,
        "grant_id": row.grant_id,
        "ledger_id": row.graph_run_id,
        "created_at": format_utc_or_none(row.created_at),
        "expires_at": format_utc_or_none(row.expires_at),
        "on_timeout": row.on_timeout,
        "decided_by": row.decided_by,
        "decided_at": format_utc_or_none(row.decided_at),
        "note": row.decision_note,
        "dagster_run_id": row.dagster_run_id,
        "launched_at": format_utc_or_none(row.launched_at),
        "run_status": row.run_status,
    }


def _with_run_status() -> sa.Select[Any]:
    return sa.select(approvals, run_ledger.c.status.label("run_status")).select_from(
        approvals.join(run_ledger, run_ledger.c.id == approvals.c.graph_run_id)
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


def locked(conn: sa.Connection, query: sa.Select[Any], *, skip_locked: bool = False) -> Any:
    """``query`` with its rows locked on Postgres, where two deciders can truly race."""
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
        locked(conn, sa.select(approvals).where(approvals.c.id == approval_id))
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
            f" by {current.decided_by} at {format_utc_or_none(current.decided_at)}"
            if current.decided_by
            else ""
        )
        raise Conflict(
            f"approval {approval_id} is already {current.status}{decided}; nothing was changed"
        )
    if status == DENIED:
        reason = f"rejected by {by}" + (f": {note}" if note else "")
        slot_status.settle_awaiting(
            conn, [row.graph_run_id], REJECTED, code="rejected", message=reason[:MAX_NOTE], now=now
        )
    audit_decisions(conn, [(row, f"approval.{decision}", by, note, source)], now)
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


def audit_decisions(
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
                    "scheduled_for": format_utc_or_none(row.scheduled_for),
                    "ledger_id": row.graph_run_id,
                },
            }
            for row, action, actor, note, source in entries
        ],
    )
