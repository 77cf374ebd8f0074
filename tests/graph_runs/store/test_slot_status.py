"""graph_runs.store.slot_status: the table of allowed status moves, walked on a real database.

Every (from, to) pair of statuses is tried on a real ledger row, on SQLite and PostgreSQL:
an allowed move happens, any other is refused with an error naming both statuses and leaves
the row as it was. Also checks, by reading the source, that no other module writes the
ledger, and that the state diagram in docs/how-a-slot-fires.md is the one the table generates.
"""

import ast
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from graph_runs.core.ids import new_id
from graph_runs.core.statuses import (
    AWAITING_APPROVAL,
    FAILED,
    IN_FLIGHT,
    NEVER_RAN,
    PENDING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
)
from graph_runs.store import slot_status
from graph_runs.store.slot_status import NEW, TRANSITIONS, IllegalTransition
from graph_runs.store.tables import run_ledger
from tests.helpers import at

ROOT = Path(__file__).resolve().parents[3]
NOW = at("2026-11-23T09:00:00Z")
STATUSES = sorted(IN_FLIGHT | NEVER_RAN | {SUCCEEDED, FAILED, AWAITING_APPROVAL})
FUNCTIONS = sorted({name for names in TRANSITIONS.values() for name in names})


def ledger_row(status: str) -> dict[str, Any]:
    return {
        "id": new_id("run"),
        "idempotency_key": new_id("key"),
        "graph_id": "echo",
        "owner": "alice",
        "grant_id": "grt_1",
        "input": {},
        "trigger_kind": "api",
        "trigger_source": "test",
        "status": status,
        "created_at": NOW,
    }


def stored_status(conn: sa.Connection, ledger_id: str) -> str:
    query = sa.select(run_ledger.c.status).where(run_ledger.c.id == ledger_id)
    return str(conn.execute(query).scalar_one())


def test_every_status_is_in_the_table() -> None:
    named = {status for edge in TRANSITIONS for status in edge if status is not None}
    assert named == set(STATUSES)
    # Every status a row can be in is reachable from a new row.
    reached, frontier = set(), {NEW}
    while frontier:
        frontier = {t for (s, t) in TRANSITIONS if s in frontier} - reached
        reached |= frontier
    assert reached == set(STATUSES)


def test_walk_the_table(engine: sa.Engine) -> None:
    """Each pair of statuses, by each function: the allowed moves happen, no other does."""
    moved = refused = 0
    with engine.begin() as conn:
        for source, target in itertools.product(STATUSES, STATUSES):
            allowed = TRANSITIONS.get((source, target), ())
            for by in FUNCTIONS:
                row = ledger_row(source)
                conn.execute(run_ledger.insert().values(**row))
                read = conn.execute(sa.select(run_ledger).where(run_ledger.c.id == row["id"])).one()
                if by in allowed:
                    assert slot_status.move(conn, read, target, by=by, finished_at=NOW)
                    assert stored_status(conn, row["id"]) == target
                    moved += 1
                    continue
                with pytest.raises(IllegalTransition) as refusal:
                    slot_status.move(conn, read, target, by=by)
                message = str(refusal.value)
                assert f"{by}: ledger row {row['id']} cannot move from {source} to {target}" in (
                    message
                )
                assert stored_status(conn, row["id"]) == source
                refused += 1
        conn.execute(run_ledger.delete())
    assert moved == sum(len(names) for (s, _), names in TRANSITIONS.items() if s is not None)
    assert refused == len(STATUSES) ** 2 * len(FUNCTIONS) - moved


def test_new_rows_start_only_where_the_table_says(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for status in STATUSES:
            row = ledger_row(status)
            if (NEW, status) in TRANSITIONS:
                assert slot_status.insert_new(conn, [row]) == 1
                assert stored_status(conn, row["id"]) == status
                continue
            with pytest.raises(IllegalTransition, match=f"cannot move from new to {status}"):
                slot_status.insert_new(conn, [row])
            assert (
                conn.execute(sa.select(run_ledger.c.id).where(run_ledger.c.id == row["id"])).all()
                == []
            )


def test_a_move_from_a_status_the_row_left_changes_nothing(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        row = ledger_row(QUEUED)
        conn.execute(run_ledger.insert().values(**row))
        read = conn.execute(sa.select(run_ledger).where(run_ledger.c.id == row["id"])).one()
        assert slot_status.start(conn, read, dagster_run_id="run-1", now=NOW)
        # ``read`` still says queued; the row is running now, so the outcome for queued
        # (the reconciliation's, say) does not overwrite it.
        assert not slot_status.settle_outcome(conn, read, FAILED, finished_at=NOW)
        assert stored_status(conn, row["id"]) == RUNNING


def test_the_refusal_names_what_is_allowed() -> None:
    with pytest.raises(IllegalTransition) as refusal:
        slot_status.check(SUCCEEDED, PENDING, "settle_outcome")
    assert str(refusal.value) == (
        "settle_outcome: a ledger row cannot move from succeeded to pending "
        "(from succeeded it may move to nothing)"
    )
    with pytest.raises(IllegalTransition) as refusal:
        slot_status.check(QUEUED, PENDING, "start")
    assert str(refusal.value) == (
        "start: a ledger row cannot move from queued to pending (from queued it may move to "
        "cancelled, cancelling, failed, running, succeeded)"
    )


def _ledger_writes(path: Path) -> list[int]:
    """Lines of ``path`` that insert, update or delete ``run_ledger`` rows."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        names = [a.id for a in node.args if isinstance(a, ast.Name)]
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "run_ledger"
            and func.attr in ("insert", "update", "delete")
        ) or (
            "run_ledger" in names
            and getattr(func, "attr", getattr(func, "id", ""))
            in (
                "insert",
                "update",
                "delete",
                "insert_ignoring_conflicts",
            )
        ):
            lines.append(node.lineno)
    return lines


def test_no_other_module_writes_the_ledger() -> None:
    writers = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "graph_runs").rglob("*.py"))
        if (lines := _ledger_writes(path))
    }
    assert set(writers) == {"graph_runs/store/slot_status.py"}, writers


def test_the_documented_diagram_is_the_table() -> None:
    page = (ROOT / "docs" / "how-a-slot-fires.md").read_text()
    found = re.search(r"```mermaid\n(stateDiagram-v2\n.*?)```", page, re.S)
    assert found, "docs/how-a-slot-fires.md has no mermaid stateDiagram-v2 block"
    assert found.group(1) == slot_status.state_diagram(), (
        "docs/how-a-slot-fires.md's diagram differs from slot_status.TRANSITIONS; regenerate "
        "it with: python -c "
        "'from graph_runs.store.slot_status import state_diagram as d; print(d())'"
    )
