"""graph_runs.money.budgets: a budget reached mid-period skips due slots until raised or rolled on.

Real SQLite and PostgreSQL databases; the receipts are written by the ledger.
"""

from decimal import Decimal

import pytest
import sqlalchemy as sa

from graph_runs.core.errors import InvalidInput
from graph_runs.dispatch.ledger import record_outcome
from graph_runs.execution_api.client import Outcome, Usage
from graph_runs.money.budgets import list_budgets, set_budget
from tests.helpers import at, claim_at, ledger_statuses, make_grant, make_schedule, set_run_status

CREATED = at("2026-11-30T22:00:30Z")
USAGE = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_usd=Decimal("0.02"))


def run_slot(conn: sa.Connection, schedule_id: str, slot: str, api_run: str) -> None:
    ledger_id = set_run_status(conn, schedule_id, slot, "running", f"dagster-{api_run}")
    outcome = Outcome(status="succeeded", api_run_id=api_run, usage=USAGE)
    record_outcome(conn, ledger_id, outcome, dagster_run_id=f"dagster-{api_run}", now=at(slot))


def test_a_budget_reached_mid_month_skips_slots_until_raised_or_rolled_over(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="*/10 * * * *")
        sid = view["id"]
        set_budget(
            conn,
            billing_account="alice-billing",
            period="month",
            limit_usd=Decimal("0.04"),
            now=CREATED,
        )
        for slot, api_run in (("2026-11-30T22:10:00Z", "a1"), ("2026-11-30T22:20:00Z", "a2")):
            claim_at(conn, at(slot))
            run_slot(conn, sid, slot, api_run)
        # 0.04 USD spent of 0.04: the next slot is skipped, visibly, with no run.
        claim_at(conn, at("2026-11-30T22:30:00Z"))
        (budget,) = list_budgets(conn, at("2026-11-30T22:30:00Z"))
        assert (budget["spent_usd"], budget["reached"]) == ("0.04", True)
        set_budget(
            conn,
            billing_account="alice-billing",
            period="month",
            limit_usd=Decimal("0.05"),
            now=at("2026-11-30T22:35:00Z"),
        )
        claim_at(conn, at("2026-11-30T22:40:00Z"))  # raised: fires again
        run_slot(conn, sid, "2026-11-30T22:40:00Z", "a3")
        claim_at(conn, at("2026-11-30T22:50:00Z"))  # 0.06 of 0.05: skipped again
        claim_at(conn, at("2026-12-01T00:00:00Z"))  # a new month: spend starts at zero
        statuses = ledger_statuses(conn, sid)
    by_slot = dict(statuses)
    assert [by_slot[f"2026-11-30T22:{m}:00Z"] for m in ("10", "20", "30", "40", "50")] == [
        "succeeded",
        "succeeded",
        "skipped_budget",
        "succeeded",
        "skipped_budget",
    ]
    # The slots of 23:00-23:50 were never claimed on time (catch-up latest); 00:00 fires.
    assert by_slot["2026-12-01T00:00:00Z"] == "pending"


def test_bad_budgets_name_their_field(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        with pytest.raises(InvalidInput, match="period: 'week' is not one of month"):
            set_budget(conn, billing_account="b", period="week", limit_usd=Decimal(1), now=CREATED)
        with pytest.raises(InvalidInput, match="limit_usd: must be zero or more"):
            set_budget(
                conn, billing_account="b", period="month", limit_usd=Decimal(-1), now=CREATED
            )
        assert list_budgets(conn, CREATED) == []
