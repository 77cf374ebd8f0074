"""graph_runs.dispatch.ledger: outcomes recorded once, counters moved once, one receipt per run.

Real SQLite and PostgreSQL databases; outcomes are built by hand as the client returns them.
"""

import threading
import time
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from graph_runs.core.errors import Conflict
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch import ledger
from graph_runs.execution_api.client import Outcome, Usage
from graph_runs.scheduling.claim import claim_due_slots
from graph_runs.scheduling.schedules import pause_schedule
from graph_runs.store.tables import charge_receipts, schedules
from tests.helpers import at, make_grant, make_schedule, waiting_on_a_lock

NOW = at("2026-11-22T10:00:30Z")
USAGE = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, cost_usd=Decimal("0.00003"))


def claimed_row(engine: sa.Engine) -> tuple[Any, str]:
    with engine.begin() as conn:
        grant = make_grant(conn, NOW)
        view = make_schedule(conn, NOW, grant)
        claim_due_slots(conn, now=at("2026-11-22T10:01:00Z"), schedule_limits=ScheduleLimits())
        row = conn.execute(sa.select(ledger.run_ledger)).one()
    return row, view["id"]


def counters(engine: sa.Engine, schedule_id: str) -> tuple[int, int, int]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(schedules).where(schedules.c.id == schedule_id)).one()
    return row.runs_total, row.runs_succeeded, row.runs_failed


def receipts(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(charge_receipts)))


def record(engine: sa.Engine, ledger_id: str, outcome: Outcome, run: str = "dagster-1") -> dict:
    with engine.begin() as conn:
        return ledger.record_outcome(conn, ledger_id, outcome, dagster_run_id=run, now=NOW)


def test_recording_twice_bills_and_counts_once(engine: sa.Engine) -> None:
    row, schedule_id = claimed_row(engine)
    outcome = Outcome(status="succeeded", api_run_id="apirun_1", usage=USAGE)
    first = record(engine, row.id, outcome)
    second = record(engine, row.id, outcome, run="dagster-2")
    assert (first["changed"], first["receipt_written"]) == (True, True)
    assert (second["changed"], second["receipt_written"]) == (False, False)
    assert counters(engine, schedule_id) == (1, 1, 0)
    (receipt,) = receipts(engine)
    assert (receipt.cost_micros, receipt.total_tokens, receipt.billing_account) == (
        30,
        15,
        "alice-billing",
    )
    assert (receipt.schedule_id, receipt.dagster_run_id) == (schedule_id, "dagster-1")


def test_failure_then_success_on_re_execution_moves_one_count(engine: sa.Engine) -> None:
    row, schedule_id = claimed_row(engine)
    record(engine, row.id, Outcome(status="failed", error_code="api_unavailable"))
    record(engine, row.id, Outcome(status="failed", error_code="api_unavailable"))
    assert counters(engine, schedule_id) == (1, 0, 1)
    record(engine, row.id, Outcome(status="succeeded", api_run_id="apirun_1", usage=USAGE))
    assert counters(engine, schedule_id) == (1, 1, 0)
    # A succeeded run never goes back.
    result = record(engine, row.id, Outcome(status="failed", error_code="late"))
    assert result["status"] == "succeeded" and counters(engine, schedule_id) == (1, 1, 0)


def test_one_receipt_per_api_run_even_across_ledger_rows(engine: sa.Engine) -> None:
    row, _ = claimed_row(engine)
    record(engine, row.id, Outcome(status="succeeded", api_run_id="apirun_1", usage=USAGE))
    with engine.begin() as conn:
        other = ledger.start_adhoc_run(
            conn,
            ledger.AdhocRequest("k1", "echo", row.grant_id, {}),
            owner="alice",
            billing_account="alice-billing",
            dagster_run_id="dagster-9",
            now=NOW,
        )
    result = record(
        engine, other.id, Outcome(status="succeeded", api_run_id="apirun_1", usage=USAGE)
    )
    assert result["receipt_written"] is False
    assert len(receipts(engine)) == 1


def test_adhoc_key_reuse_with_another_request_is_a_conflict(engine: sa.Engine) -> None:
    row, _ = claimed_row(engine)
    request = ledger.AdhocRequest("key-1", "echo", row.grant_id, {"a": 1})
    with engine.begin() as conn:
        first = ledger.start_adhoc_run(
            conn, request, owner="alice", billing_account="b", dagster_run_id="r1", now=NOW
        )
        again = ledger.start_adhoc_run(
            conn, request, owner="alice", billing_account="b", dagster_run_id="r2", now=NOW
        )
        assert first.id == again.id and again.idempotency_key == "api:key-1"
        changed = ledger.AdhocRequest("key-1", "echo", row.grant_id, {"a": 2})
        with pytest.raises(Conflict, match="different input"):
            ledger.start_adhoc_run(
                conn, changed, owner="alice", billing_account="b", dagster_run_id="r3", now=NOW
            )


def test_request_body_is_the_contracts_and_stable(engine: sa.Engine) -> None:
    row, schedule_id = claimed_row(engine)
    body = ledger.request_body(row, ["conn_b", "conn_a"])
    assert body == {
        "grant_id": row.grant_id,
        "input": {"topic": "news"},
        "trigger": {
            "kind": "scheduled",
            "source": "graph_schedules_sensor",
            "ref": schedule_id,
            "requested_by": None,
        },
        "schedule_id": schedule_id,
        "scheduled_for": "2026-11-22T10:01:00Z",
        "limits": {"max_cost_usd": None, "timeout_seconds": None},
        "connection_ids": ["conn_a", "conn_b"],
    }
    assert ledger.request_body(row, ["conn_a", "conn_b"]) == body
    assert row.idempotency_key == f"sched:{schedule_id}:2026-11-22T10:01:00Z"


def test_an_outcome_and_a_pause_take_their_locks_in_one_order(engine: sa.Engine) -> None:
    """A worker records an outcome while ``pause --terminate`` cancels the same run.

    The pause locks the schedule row, then the ledger rows. The worker starts in between,
    exactly then; it must wait for the schedule before it locks the ledger row (the order
    everyone takes), or Postgres finds a deadlock, aborts one side, and the receipt is lost.
    """
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers: there are no row locks to order")
    row, schedule_id = claimed_row(engine)
    with engine.begin() as conn:
        ledger.start_run(conn, row.id, dagster_run_id="dagster-1", now=NOW)
    outcome = Outcome(status="succeeded", api_run_id="apirun_1", usage=USAGE)
    worker: dict[str, Any] = {}

    def record_in_worker() -> None:
        try:
            with engine.begin() as conn:
                worker["pid"] = conn.connection.dbapi_connection.get_backend_pid()  # type: ignore[union-attr]
                worker["result"] = ledger.record_outcome(
                    conn, row.id, outcome, dagster_run_id="dagster-1", now=NOW
                )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            worker["error"] = exc

    thread = threading.Thread(target=record_in_worker)

    def start_worker_before_the_ledger_update(_conn, _cursor, statement, *_args) -> None:
        if thread.ident is not None or not statement.startswith("UPDATE graph_runs "):
            return
        thread.start()
        for _ in range(500):  # at most about 10 s
            if "error" in worker or ("pid" in worker and waiting_on_a_lock(engine, worker["pid"])):
                break
            time.sleep(0.02)
        assert "pid" in worker and "error" not in worker, worker

    with engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", start_worker_before_the_ledger_update)
        with conn.begin():
            pause_schedule(conn, schedule_id, now=NOW, note="stop", terminate=True)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "error" not in worker, worker["error"]
    assert worker["result"]["receipt_written"]
    (receipt,) = receipts(engine)
    assert receipt.api_run_id == "apirun_1"
