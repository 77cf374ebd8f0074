"""graph_runs.operations.health: each signal of ``graph-runs status`` from a ledger built for it.

Real SQLite and PostgreSQL databases, a fixed clock.
"""

from decimal import Decimal

import sqlalchemy as sa

from graph_runs.money.budgets import set_budget
from graph_runs.operations.health import Thresholds, health
from graph_runs.store.tables import run_ledger, schedules
from tests.helpers import at, claim_at, make_grant, make_schedule

CREATED = at("2026-11-22T07:59:30Z")
NOW = at("2026-11-22T10:03:00Z")


def test_a_quiet_scheduler_is_healthy(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        make_schedule(conn, NOW, make_grant(conn, NOW), cron="0 9 * * *")
        report = health(conn, now=NOW, thresholds=Thresholds())
    assert report["healthy"] and report["problems"] == []
    assert report["backlog"]["total"] == 0 and report["lag_last_hour"]["slots"] == 0


def test_every_signal_and_every_breach_is_named(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        late = make_schedule(conn, CREATED, grant, cron="0 * * * *", catchup="none")
        fired = make_schedule(conn, CREATED, grant, cron="*/5 * * * *")
        gated = make_schedule(conn, CREATED, grant, cron="0 10 * * *", requires_approval=True)
        broken = make_schedule(conn, CREATED, grant, cron="0 9 * * *")
        # Claimed at 08:00, the hourly slot; then the sensor stopped until 10:00:05.
        claim_at(conn, at("2026-11-22T08:00:05Z"))
        claim_at(conn, at("2026-11-22T10:00:05Z"))
        # The five-minute schedule's 10:00 slot fired 2.5 s late and succeeded.
        conn.execute(
            run_ledger.update()
            .where(
                run_ledger.c.schedule_id == fired["id"],
                run_ledger.c.scheduled_for == at("2026-11-22T10:00:00Z"),
            )
            .values(status="succeeded", started_at=at("2026-11-22T10:00:02.500000Z"))
        )
        conn.execute(
            schedules.update()
            .where(schedules.c.id == broken["id"])
            .values(status="error", last_error="timezone: unknown")
        )
        set_budget(
            conn, billing_account="alice-billing", period="month", limit_usd=Decimal(0), now=NOW
        )
        report = health(conn, now=NOW, thresholds=Thresholds())
    backlog = report["backlog"]
    # Claimed and not fired: the late schedule's 10:00 slot (08:00 fired long ago, pending).
    assert backlog["claimed_not_fired"] >= 1
    assert backlog["oldest_due_at"] == "2026-11-22T08:00:00Z"
    assert report["lag_last_hour"] == {"slots": 1, "p50_seconds": 2.5, "p99_seconds": 2.5}
    missed = report["not_run_last_24h"]["missed"]
    assert sum(missed.values()) >= 1 and set(missed) == {"missed"}
    assert report["approvals"]["pending"] == 1
    assert report["schedules_in_error"] == {"count": 1, "ids": [broken["id"]]}
    assert report["accounts_at_budget"] == ["alice-billing"]
    assert not report["healthy"]
    named = " | ".join(report["problems"])
    for fragment in ("due backlog", "oldest due slot", "missed slots", "schedules in error"):
        assert fragment in named
    assert "dispatch lag" not in named  # 2.5 s is within 60 s
    # A threshold set to None is not checked.
    relaxed = Thresholds(
        max_backlog=None, max_oldest_pending_seconds=None, max_missed_24h=None,
        max_schedules_in_error=None,
    )  # fmt: skip
    with engine.connect() as conn:
        assert health(conn, now=NOW, thresholds=relaxed)["healthy"]
    assert late["id"] and gated["id"]
