"""graph_runs.money.billing: the spend report agrees with the charge receipts to the micro-dollar.

Real SQLite and PostgreSQL databases; receipts are written by the ledger as runs finish.
"""

import datetime as dt
from collections import defaultdict
from decimal import Decimal

import pytest
import sqlalchemy as sa

from graph_runs.core.errors import InvalidInput
from graph_runs.core.money import micros_to_usd
from graph_runs.dispatch.ledger import AdhocRequest, record_outcome, start_adhoc_run
from graph_runs.execution_api.client import Outcome, Usage
from graph_runs.money.billing import spend_report
from graph_runs.store.tables import charge_receipts
from tests.helpers import at, claim_at, make_grant, make_schedule, set_run_status

CREATED = at("2026-11-01T09:00:30Z")


def usage(cost: str, tokens: int) -> Usage:
    return Usage(
        prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens, cost_usd=Decimal(cost)
    )


def adhoc(
    conn: sa.Connection, grant_id: str, graph: str, key: str, when: dt.datetime, cost: str
) -> None:
    request = AdhocRequest(idempotency_key=key, graph_id=graph, grant_id=grant_id, input={})
    row = start_adhoc_run(
        conn, request, owner="alice", billing_account="alice-billing", dagster_run_id=key, now=when
    )
    outcome = Outcome(status="succeeded", api_run_id=f"api-{key}", usage=usage(cost, 7))
    record_outcome(conn, row.id, outcome, dagster_run_id=key, now=when)


@pytest.fixture
def spending(engine: sa.Engine) -> str:
    """Receipts on three days, two graphs, a schedule and ad-hoc runs, and another account."""
    with engine.begin() as conn:
        grant = make_grant(conn, CREATED)
        view = make_schedule(conn, CREATED, grant, cron="0 23 * * *", max_cost_usd="0.10")
        for day, cost in (("2026-11-01", "0.123457"), ("2026-11-02", "0.000001")):
            claim_at(conn, at(f"{day}T23:00:05Z"))
            ledger_id = set_run_status(conn, view["id"], f"{day}T23:00:00Z", "running", "d")
            outcome = Outcome(status="succeeded", api_run_id=f"api-{day}", usage=usage(cost, 11))
            # Recorded just after midnight UTC: the receipt's day is the day it was billed.
            finished = at(f"{day}T23:59:59Z") + dt.timedelta(seconds=2)
            record_outcome(conn, ledger_id, outcome, dagster_run_id="d", now=finished)
        adhoc(conn, grant.id, "echo", "a1", at("2026-11-02T08:00:00Z"), "0.333333")
        adhoc(conn, grant.id, "sleep", "a2", at("2026-11-02T09:00:00Z"), "1.5")
        adhoc(conn, grant.id, "sleep", "a3", at("2026-11-20T09:00:00Z"), "0.25")
        other = make_grant(conn, CREATED, owner="bob")
        request = AdhocRequest(idempotency_key="b1", graph_id="echo", grant_id=other.id, input={})
        row = start_adhoc_run(
            conn, request, owner="bob", billing_account="bob-billing", dagster_run_id="b1",
            now=at("2026-11-02T08:00:00Z"),
        )  # fmt: skip
        record_outcome(
            conn, row.id, Outcome(status="succeeded", api_run_id="api-b1", usage=usage("9", 1)),
            dagster_run_id="b1", now=at("2026-11-02T08:00:00Z"),
        )  # fmt: skip
    return str(view["id"])


def test_report_agrees_with_the_receipts_by_day_graph_and_schedule(
    engine: sa.Engine, spending: str
) -> None:
    with engine.connect() as conn:
        report = spend_report(conn, "alice-billing", now=at("2026-11-25T00:00:00Z"))
        receipts = list(
            conn.execute(
                sa.select(charge_receipts).where(
                    charge_receipts.c.billing_account == "alice-billing"
                )
            )
        )
    assert (report["from"], report["to"]) == ("2026-11-01T00:00:00Z", "2026-11-25T00:00:00Z")
    by: dict[str, dict] = {
        "day": defaultdict(int),
        "graph": defaultdict(int),
        "schedule": defaultdict(int),
    }
    for r in receipts:
        by["day"][r.created_at.strftime("%Y-%m-%d")] += r.cost_micros
        by["graph"][r.graph_id] += r.cost_micros
        by["schedule"][r.schedule_id] += r.cost_micros
    assert report["total"] == {
        "cost_usd": str(micros_to_usd(sum(r.cost_micros for r in receipts))),
        "receipts": 5,
        "total_tokens": 11 * 2 + 7 * 3,
        "over_budget_runs": 1,  # the 0.123457 slot, over its 0.10 max_cost_usd
    }
    assert report["total"]["cost_usd"] == "2.206791"
    for key, section, name in (("day", "by_day", "day"), ("graph", "by_graph", "graph_id")):
        assert {g[name]: g["cost_usd"] for g in report[section]} == {
            k: str(micros_to_usd(v)) for k, v in by[key].items()
        }
    assert {g["schedule_id"]: g["cost_usd"] for g in report["by_schedule"]} == {
        k: str(micros_to_usd(v)) for k, v in by["schedule"].items()
    }
    assert [g["day"] for g in report["by_day"]] == ["2026-11-02", "2026-11-03", "2026-11-20"]
    (scheduled,) = [g for g in report["by_schedule"] if g["schedule_id"] == spending]
    assert (scheduled["receipts"], scheduled["over_budget_runs"]) == (2, 1)


def test_report_range_is_half_open_and_checked(engine: sa.Engine, spending: str) -> None:
    with engine.connect() as conn:
        day = spend_report(
            conn, "alice-billing", start=at("2026-11-02T00:00:00Z"), end=at("2026-11-02T09:00:00Z"),
            now=at("2026-11-25T00:00:00Z"),
        )  # fmt: skip
        assert (day["total"]["cost_usd"], day["total"]["receipts"]) == ("0.45679", 2)
        for start, end, field in (
            (at("2026-11-02T00:00:00Z"), at("2026-11-02T00:00:00Z"), "to"),
            (None, None, "billing_account"),
        ):
            with pytest.raises(InvalidInput) as caught:
                spend_report(
                    conn, "" if field == "billing_account" else "alice-billing",
                    start=start, end=end, now=at("2026-11-25T00:00:00Z"),
                )  # fmt: skip
            assert caught.value.field == field
        empty = spend_report(conn, "nobody", now=at("2026-11-25T00:00:00Z"))
    assert empty["total"]["cost_usd"] == "0" and empty["by_day"] == []
