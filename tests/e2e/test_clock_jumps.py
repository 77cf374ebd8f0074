"""End to end with a clock that jumps: forward an hour, then back, then on again.

The sensor's ticks and the dispatch runs read an injected clock (``ClockResource``), which
is how a jump of the machine's clock reaches them, without changing this machine's clock.
Each tick's runs execute in-process against the real local execution API over HTTP.

Forward, the slots skipped over are settled by the catch-up policy (``latest``: the last
fires, the others are missed, each with a row). Back, nothing that already fired fires
again: a schedule's cursor and the ledger's unique slot key hold, whatever the clock says.
"""

from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from graph_runs.store.tables import charge_receipts, run_ledger
from tests.conftest import RunningApi
from tests.dagster_helpers import apply_partitions, launch, make_resources, tick
from tests.helpers import at, make_grant, make_schedule

pytestmark = pytest.mark.e2e


def tick_and_run(
    instance: dg.DagsterInstance,
    database_url: str,
    api: RunningApi,
    now: str,
    cursor: str | None,
) -> tuple[str | None, int]:
    """One sensor tick at ``now``, then every run it asked for; returns the cursor and runs."""
    resources = make_resources(database_url, api, now)
    result = tick(instance, resources, cursor)
    apply_partitions(instance, result)
    requests = list(result.run_requests or [])
    for request in requests:
        assert launch(instance, resources, request).success
    return result.cursor, len(requests)


def slots(engine: sa.Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(run_ledger).order_by(run_ledger.c.scheduled_for))
        return [(f"{r.scheduled_for:%H:%M}", r.status, r.trigger_kind) for r in rows]


def test_a_clock_jumping_forward_then_back_fires_every_slot_at_most_once(
    engine: sa.Engine,
    database_url: str,
    instance: dg.DagsterInstance,
    execution_api: RunningApi,
) -> None:
    with engine.begin() as conn:
        grant = make_grant(conn, at("2026-11-22T09:00:00Z"))
        make_schedule(conn, at("2026-11-22T09:55:00Z"), grant, cron="*/10 * * * *")
    cursor: Any = None
    cursor, runs = tick_and_run(
        instance, database_url, execution_api, "2026-11-22T10:00:05Z", cursor
    )
    assert runs == 1 and slots(engine) == [("10:00", "succeeded", "scheduled")]
    # Forward an hour: six slots came due at once.
    cursor, runs = tick_and_run(
        instance, database_url, execution_api, "2026-11-22T11:00:05Z", cursor
    )
    assert runs == 1
    # Back forty minutes: the slots of 10:10 to 10:50 are due again by this clock.
    cursor, runs = tick_and_run(
        instance, database_url, execution_api, "2026-11-22T10:20:05Z", cursor
    )
    cursor, again = tick_and_run(
        instance, database_url, execution_api, "2026-11-22T10:50:30Z", cursor
    )
    assert runs == again == 0
    # And on, past the next slot.
    cursor, runs = tick_and_run(
        instance, database_url, execution_api, "2026-11-22T11:10:05Z", cursor
    )
    assert runs == 1
    missed = [(f"10:{m}0", "missed", "scheduled") for m in range(1, 6)]
    assert slots(engine) == [
        ("10:00", "succeeded", "scheduled"),
        *missed,
        ("11:00", "succeeded", "scheduled"),
        ("11:10", "succeeded", "scheduled"),
    ]
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(run_ledger).where(run_ledger.c.status == "succeeded")))
        receipts = list(conn.execute(sa.select(charge_receipts)))
    assert execution_api.store.executions == 3
    assert sorted((r.graph_run_id, r.api_run_id) for r in receipts) == sorted(
        (r.id, r.api_run_id) for r in rows
    )
