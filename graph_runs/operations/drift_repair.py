"""Repairing drift: what ``graph-runs reconcile --fix`` changes, one audit entry per change.

``graph_runs.operations.drift`` says what each kind is and what its repair does; only the kinds in
``drift.FIXABLE`` are repaired, the rest are left for a person or for the sensor.

Each repair is its own short transaction that reads the row again and changes it only if
it still has the drift: the sensor, the dispatch runs and people go on writing while
reconcile runs (on SQLite every transaction holds the one write lock, and a lease renewal
waits for it), and a row that changed since it was found is not the finding any more. An
audit entry is written only for a row that changed, with its values before and after.
"""

import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from graph_runs.core.cron import format_utc, format_utc_or_none
from graph_runs.core.errors import InvalidInput
from graph_runs.core.schedule_spec import ScheduleLimits, cursor_of, spec_from_row
from graph_runs.core.statuses import CANCELLING, QUEUED, RUNNING
from graph_runs.dispatch.reconcile import apply_run_statuses, runs_to_reconcile
from graph_runs.operations import drift
from graph_runs.operations.drift import DagsterFacts, Finding
from graph_runs.scheduling.revocation import GRANT_PAUSER
from graph_runs.scheduling.schedules import next_due, pause_schedule
from graph_runs.store.db import reading
from graph_runs.store.tables import ACTIVE_SCHEDULE, audit, execution_grants, run_ledger, schedules

ACTOR = "graph-runs reconcile"


def _audit(
    conn: sa.Connection,
    now: dt.datetime,
    finding: Finding,
    entity: str,
    change: dict[str, Any] | None = None,
) -> None:
    audit(
        conn,
        at=now,
        actor=ACTOR,
        action=f"reconcile.{finding.kind}",
        entity_type="schedule" if entity.startswith("sch") else "ledger",
        entity_id=entity,
        detail={"repair": finding.repair, **(change or {})},
    )
    finding.repaired.append(entity)


def _set_next_run(
    conn: sa.Connection,
    finding: Finding,
    schedule_id: str,
    now: dt.datetime,
    limits: ScheduleLimits,
) -> None:
    row = conn.execute(
        sa.select(schedules).where(
            schedules.c.id == schedule_id, ACTIVE_SCHEDULE, schedules.c.next_run_at.is_(None)
        )
    ).one_or_none()
    if row is None:
        return  # repaired, paused or deleted since it was found
    try:
        spec = spec_from_row(row, limits, now)
    except InvalidInput:
        return  # the sensor marks it error; that is its own finding then
    # The slot the sensor would plan: the first after the cursor, or after creation.
    _slot, due = next_due(spec, row.id, cursor_of(row, spec, now) or now)
    status = "active" if due is not None else "completed"
    changed = conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id, ACTIVE_SCHEDULE, schedules.c.next_run_at.is_(None))
        .values(next_run_at=due, status=status, updated_at=now)
    ).rowcount
    if changed:
        change = {
            "before": {"next_run_at": None, "status": row.status},
            "after": {"next_run_at": format_utc_or_none(due), "status": status},
        }
        _audit(conn, now, finding, schedule_id, change)


def _settle_ended(
    conn: sa.Connection, finding: Finding, ledger_id: str, now: dt.datetime, facts: DagsterFacts
) -> None:
    row = conn.execute(
        sa.select(
            run_ledger.c.id,
            run_ledger.c.status,
            run_ledger.c.dagster_run_id,
            run_ledger.c.schedule_id,
        ).where(
            run_ledger.c.id == ledger_id,
            run_ledger.c.status.in_([QUEUED, RUNNING, CANCELLING]),
        )
    ).one_or_none()
    # Only on what was looked up: a run id written since has no status here, which
    # apply_run_statuses would take for a run that is gone.
    if row is None or row.dagster_run_id is None or not facts.ended(row.dagster_run_id):
        return
    settled = apply_run_statuses(conn, [row], dict(facts.statuses), now=now)
    if settled.failed or settled.cancelled:
        after = conn.execute(
            sa.select(run_ledger.c.status, run_ledger.c.error_code).where(
                run_ledger.c.id == ledger_id
            )
        ).one()
        change = {
            "before": {"status": row.status, "dagster_run_id": row.dagster_run_id},
            "after": {"status": after.status, "error_code": after.error_code},
        }
        _audit(conn, now, finding, ledger_id, change)


def _pause_on_dead_grant(
    conn: sa.Connection, finding: Finding, schedule_id: str, now: dt.datetime
) -> None:
    grant = conn.execute(
        sa.select(execution_grants.c.id)
        .join(schedules, schedules.c.grant_id == execution_grants.c.id)
        .where(
            schedules.c.id == schedule_id,
            schedules.c.enabled,
            schedules.c.status.in_(["active", "error"]),
            sa.or_(
                execution_grants.c.revoked_at.is_not(None),
                execution_grants.c.expires_at <= now,
            ),
        )
    ).scalar_one_or_none()
    if grant is None:
        return  # paused, deleted or on a live grant since it was found
    note = f"grant {grant} is revoked or expired (found by reconcile at {format_utc(now)})"
    pause_schedule(conn, schedule_id, now=now, note=note, by=GRANT_PAUSER)
    change = {"before": {"enabled": True}, "after": {"enabled": False, "pause_note": note}}
    _audit(conn, now, finding, schedule_id, change)


def repair(
    engine: sa.Engine,
    findings: list[Finding],
    *,
    now: dt.datetime,
    limits: ScheduleLimits,
    dagster: DagsterFacts | None,
) -> None:
    """Repair what the database holds, one short transaction per row; fills ``repaired``.

    Partition findings are the caller's to repair (it holds Dagster); it records them with
    ``record_partition_repairs``. Nothing that trusts Dagster's side is repaired when the
    instance is not trusted (``DagsterFacts.trusted``).
    """
    for finding in findings:
        for entity in finding.ids:
            with engine.begin() as conn:
                if finding.kind == "next_run_missing":
                    _set_next_run(conn, finding, entity, now, limits)
                elif finding.kind == "run_ended_unrecorded":
                    if dagster is not None and dagster.trusted:
                        _settle_ended(conn, finding, entity, now, dagster)
                elif finding.kind == "schedule_on_dead_grant":
                    _pause_on_dead_grant(conn, finding, entity, now)


def find_and_repair(
    engine: sa.Engine,
    facts_of: Callable[[list[str], list[str]], DagsterFacts] | None,
    *,
    now: dt.datetime,
    limits: ScheduleLimits,
    fix: bool,
) -> tuple[list[Finding], DagsterFacts | None]:
    """Find drift, and with ``fix`` repair the database's side; the findings and the facts.

    ``facts_of(in_flight, recent)`` reads Dagster's side (None: the database's alone). It
    is called first, with no transaction open; then the database is read in one reading
    transaction (on SQLite it holds no write lock), then each repair writes in a short
    transaction of its own.
    """
    facts = None
    if facts_of is not None:
        with reading(engine) as conn:
            in_flight = [r.dagster_run_id for r in runs_to_reconcile(conn, drift.MAX_ROWS)]
            recent = drift.recent_run_ids(conn)
        facts = facts_of(in_flight, recent)
    with reading(engine) as conn:
        findings = drift.find_drift(conn, now=now, limits=limits, dagster=facts)
    if fix:
        repair(engine, findings, now=now, limits=limits, dagster=facts)
    return findings, facts


def record_partition_repairs(
    conn: sa.Connection, finding: Finding, keys: list[str], *, now: dt.datetime
) -> None:
    """One audit entry per partition the caller added or deleted."""
    for key in keys:
        _audit(conn, now, finding, key)
