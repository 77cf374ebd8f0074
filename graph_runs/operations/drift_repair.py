"""Repairing drift: what ``graph-runs reconcile --fix`` changes, one audit entry per change.

``graph_runs.operations.drift`` says what each kind is and what its repair does; only the kinds in
``drift.FIXABLE`` are repaired, the rest are left for a person or for the sensor.
"""

import datetime as dt

import sqlalchemy as sa

from graph_runs.core.cron import format_utc
from graph_runs.core.errors import InvalidInput
from graph_runs.core.schedule_spec import ScheduleLimits, spec_from_row
from graph_runs.dispatch.reconcile import apply_run_statuses, runs_to_reconcile
from graph_runs.operations.drift import MAX_ROWS, DagsterFacts, Finding
from graph_runs.scheduling.claim import claim_due_slots
from graph_runs.scheduling.revocation import GRANT_PAUSER
from graph_runs.scheduling.schedules import next_due, pause_schedule
from graph_runs.store.tables import audit, schedules

ACTOR = "graph-runs reconcile"


def _audit(conn: sa.Connection, now: dt.datetime, finding: Finding, entity: str) -> None:
    audit(
        conn,
        at=now,
        actor=ACTOR,
        action=f"reconcile.{finding.kind}",
        entity_type="schedule" if entity.startswith("sch") else "ledger",
        entity_id=entity,
        detail={"repair": finding.repair},
    )


def repair(
    conn: sa.Connection,
    findings: list[Finding],
    *,
    now: dt.datetime,
    limits: ScheduleLimits,
    dagster: DagsterFacts | None,
) -> None:
    """Repair what the database holds; fills each finding's ``repaired``.

    Partition findings are the caller's to repair (it holds Dagster); it records them with
    ``record_partition_repairs``.
    """
    for finding in findings:
        if finding.kind == "next_run_missing":
            for row in conn.execute(sa.select(schedules).where(schedules.c.id.in_(finding.ids))):
                try:
                    spec = spec_from_row(row, limits, now)
                except InvalidInput:
                    continue
                _slot, due = next_due(spec, row.id, now)
                conn.execute(
                    schedules.update()
                    .where(schedules.c.id == row.id, schedules.c.next_run_at.is_(None))
                    .values(
                        next_run_at=due,
                        status="active" if due is not None else "completed",
                        updated_at=now,
                    )
                )
                _audit(conn, now, finding, row.id)
                finding.repaired.append(row.id)
        elif finding.kind == "next_run_behind":
            claim_due_slots(conn, now=now, schedule_limits=limits, schedule_ids=finding.ids)
            for schedule_id in finding.ids:
                _audit(conn, now, finding, schedule_id)
                finding.repaired.append(schedule_id)
        elif finding.kind == "run_ended_unrecorded" and dagster is not None:
            wanted = set(finding.ids)
            rows = [r for r in runs_to_reconcile(conn, MAX_ROWS) if r.id in wanted]
            statuses = dagster.run_statuses(sorted({r.dagster_run_id for r in rows}))
            apply_run_statuses(conn, rows, dict(statuses), now=now)
            for row in rows:
                _audit(conn, now, finding, row.id)
                finding.repaired.append(row.id)
        elif finding.kind == "schedule_on_dead_grant":
            for schedule_id in finding.ids:
                grant = conn.execute(
                    sa.select(schedules.c.grant_id).where(schedules.c.id == schedule_id)
                ).scalar_one()
                note = (
                    f"grant {grant} is revoked or expired (found by reconcile at {format_utc(now)})"
                )
                pause_schedule(conn, schedule_id, now=now, note=note, by=GRANT_PAUSER)
                _audit(conn, now, finding, schedule_id)
                finding.repaired.append(schedule_id)


def record_partition_repairs(
    conn: sa.Connection, finding: Finding, keys: list[str], *, now: dt.datetime
) -> None:
    """One audit entry per partition the caller added or deleted."""
    for key in keys:
        _audit(conn, now, finding, key)
    finding.repaired.extend(keys)
