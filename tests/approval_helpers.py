"""Builders for approval tests: a requires-approval schedule whose first slot came due."""

import sqlalchemy as sa

from graph_runs.approvals import decisions as approvals
from graph_runs.store.tables import audit_log
from tests.helpers import at, claim_at, make_grant, make_schedule

CREATED = at("2026-11-22T10:00:30Z")
DUE = at("2026-11-22T10:01:02Z")


CREATED = at("2026-11-22T10:00:30Z")
DUE = at("2026-11-22T10:01:02Z")


def gated(engine: sa.Engine, **fields) -> dict:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, requires_approval=True, **fields)
        claim_at(conn, DUE)
    return view


def only_approval(engine: sa.Engine) -> dict:
    with engine.connect() as conn:
        (approval,) = approvals.list_approvals(conn)
    return approval


def audit_actions(engine: sa.Engine, approval_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_log.c.action, audit_log.c.actor)
            .where(audit_log.c.entity_id == approval_id)
            .order_by(audit_log.c.id)
        )
        return [tuple(r) for r in rows]
