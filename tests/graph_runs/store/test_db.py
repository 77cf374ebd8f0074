"""graph_runs.store.db and migrations/: the migration builds exactly tables.py.

The schema check names its fix, the due query reads the partial index, and the batched
insert skips conflicts, counts exactly and keeps every type. Real SQLite and PostgreSQL.
"""

import datetime as dt
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from graph_runs.store.db import (
    SchemaError,
    check_schema,
    head_revision,
    insert_ignoring_conflicts,
    make_engine,
    normalize_url,
    upgrade,
)
from graph_runs.store.tables import ACTIVE_SCHEDULE, execution_grants, metadata, schedules
from tests.conftest import private_postgres_database
from tests.helpers import at


def test_migrations_build_exactly_the_tables_the_code_uses(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_upgrade_is_safe_to_run_again(engine: sa.Engine) -> None:
    before, after = upgrade(engine)
    assert before == after == head_revision()
    check_schema(engine)


def test_empty_database_is_reported_with_the_command_that_fixes_it(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(SchemaError, match=r"no schema yet: run `graph-runs db upgrade`"):
        check_schema(engine)
    engine.dispose()


def test_older_and_unknown_revisions_are_reported(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'zzzz'"))
    try:
        with pytest.raises(SchemaError, match="does not know .* deploy a newer graph-runs"):
            check_schema(engine)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE alembic_version SET version_num = '{head_revision()}'"))


def test_postgres_urls_are_pinned_to_psycopg2() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_due_query_uses_the_partial_index(engine: sa.Engine) -> None:
    query = (
        sa.select(schedules.c.id)
        .where(ACTIVE_SCHEDULE, schedules.c.next_run_at <= at("2026-11-22T10:00:00Z"))
        .order_by(schedules.c.next_run_at)
    )
    with engine.connect() as conn:
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(
            str(r)
            for r in conn.exec_driver_sql(
                f"EXPLAIN {'QUERY PLAN ' if conn.dialect.name == 'sqlite' else ''}{compiled}"
            )
        )
    assert "ix_schedules_due" in plan


def test_a_schedule_written_before_0002_keeps_firing_with_the_defaults(tmp_path) -> None:
    from alembic import command

    from graph_runs.store.db import alembic_config
    from tests.helpers import claim_at, ledger_statuses

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(engine), "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO execution_grants (id, owner, billing_account, scopes, connection_ids,"
            " created_at) VALUES ('grt_1', 'alice', 'acme', '[\"graph:execute:*\"]', '[]',"
            " '2026-11-22 09:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO schedules (id, owner, graph_id, input, cron, grant_id, next_run_at,"
            " created_at, updated_at) VALUES ('sch_old', 'alice', 'echo', '{}', '0 * * * *',"
            " 'grt_1', '2026-11-22 10:00:00', '2026-11-22 09:00:00', '2026-11-22 09:00:00')"
        )
    assert upgrade(engine) == ("0001", head_revision())
    with engine.begin() as conn:
        row = conn.execute(sa.select(schedules)).one()
        assert (row.overlap, row.catchup, row.catchup_window_seconds) == ("skip", "latest", 3600)
        assert (row.pause_after_failures, row.jitter_seconds, row.slot_cursor) == (3, 0, None)
        claim_at(conn, at("2026-11-22T10:00:05Z"))
        assert ledger_statuses(conn, "sch_old") == [("2026-11-22T10:00:00Z", "pending")]
    engine.dispose()


def test_outcomes_recorded_before_0010_are_history_not_announced(tmp_path) -> None:
    from alembic import command

    from graph_runs.store.db import alembic_config
    from graph_runs.store.tables import run_ledger

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(engine), "0009")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO graph_runs (id, idempotency_key, schedule_id, graph_id, owner, grant_id,"
            " input, trigger_kind, trigger_source, status, created_at) VALUES ('run_old',"
            " 'k_old', 'sch_old', 'echo', 'alice', 'grt_1', '{}', 'schedule', 'sensor',"
            " 'succeeded', '2026-11-22 10:00:00')"
        )
    assert upgrade(engine) == ("0009", head_revision())
    with engine.connect() as conn:
        # A first tick that announced a whole ledger would stall the daemon for hours.
        assert conn.execute(sa.select(run_ledger.c.announce_tick)).scalar_one() is None
    engine.dispose()


def _grant(grant_id: str, **values: object) -> dict[str, object]:
    return {
        "id": grant_id, "owner": "alice", "billing_account": "acct", "created_at":
        at("2026-11-22T10:00:00Z"), "scopes": ["graph:execute:*"], "connection_ids": [],
        **values,
    }  # fmt: skip


def test_batched_insert_skips_conflicts_counts_exactly_and_keeps_types(
    engine: sa.Engine,
) -> None:
    expires = at("2026-12-01T00:00:00Z")
    with engine.begin() as conn:
        assert insert_ignoring_conflicts(conn, execution_grants, [_grant("grt_1")]) == 1
        rows = [
            _grant("grt_1"),  # a conflict: skipped, not counted
            _grant("grt_2", scopes=["graph:execute:a", "graph:execute:b"], expires_at=expires),
            _grant("grt_3", connection_ids=[{"nested": [1, None, "\u00e9"]}]),
            _grant("grt_4", expires_at=None),  # grt_2 and grt_4 name a column grt_3 leaves out
        ]
        assert insert_ignoring_conflicts(conn, execution_grants, rows) == 3
        stored = {
            r.id: r
            for r in conn.execute(sa.select(execution_grants).order_by(execution_grants.c.id))
        }
    assert sorted(stored) == ["grt_1", "grt_2", "grt_3", "grt_4"]
    assert stored["grt_2"].scopes == ["graph:execute:a", "graph:execute:b"]
    assert stored["grt_2"].expires_at == expires
    assert stored["grt_3"].connection_ids == [{"nested": [1, None, "\u00e9"]}]
    assert stored["grt_4"].expires_at is None


def test_batched_insert_refuses_a_naive_time_and_writes_nothing(engine: sa.Engine) -> None:
    rows = [_grant("grt_1"), _grant("grt_2", created_at=dt.datetime(2026, 11, 22, 10))]
    # SQLAlchemy wraps the type's error on SQLite; on Postgres the values are processed first.
    with pytest.raises((ValueError, sa.exc.StatementError), match="naive datetime"):
        with engine.begin() as conn:
            insert_ignoring_conflicts(conn, execution_grants, rows)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(execution_grants)).scalar() == 0


@pytest.fixture
def unmigrated_postgres() -> Iterator[str]:
    """A PostgreSQL database of this test's own, with no schema, dropped afterwards."""
    with private_postgres_database("graph_runs_migrate") as url:
        yield url


@pytest.mark.postgres
def test_0006_builds_its_indexes_without_blocking_ledger_writes(unmigrated_postgres: str) -> None:
    # A plain CREATE INDEX queues a SHARE lock behind a running writer, and every later
    # writer queues behind it; a concurrent build lets them through while it waits.
    from alembic import command

    from graph_runs.store.db import alembic_config

    engine = make_engine(unmigrated_postgres)
    command.upgrade(alembic_config(engine), "0005")
    failure: list[BaseException] = []

    def migrate() -> None:
        try:
            command.upgrade(alembic_config(engine), "0006")
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread below
            failure.append(exc)

    with engine.connect() as writer:
        writer.exec_driver_sql("LOCK TABLE graph_runs IN ROW EXCLUSIVE MODE")
        migration = threading.Thread(target=migrate, daemon=True)
        migration.start()
        with engine.connect() as watcher:
            deadline = time.monotonic() + 20
            while not watcher.exec_driver_sql(
                "SELECT count(*) FROM pg_locks WHERE NOT granted"
            ).scalar():
                assert time.monotonic() < deadline, "the migration never waited for the writer"
                time.sleep(0.02)
        with engine.connect() as later_writer:
            later_writer.exec_driver_sql("SET lock_timeout = '2s'")
            later_writer.exec_driver_sql("UPDATE graph_runs SET status = status WHERE false")
            later_writer.commit()
        writer.commit()
    migration.join(timeout=30)
    assert not migration.is_alive() and not failure, failure
    with engine.connect() as conn:
        indexes = dict(
            conn.execute(
                sa.text(
                    "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c "
                    "ON c.oid = i.indexrelid WHERE c.relname LIKE 'ix_graph_runs_%'"
                )
            ).all()
        )
    assert indexes["ix_graph_runs_created"] and indexes["ix_graph_runs_dagster_run"]
    assert upgrade(engine)[1] == head_revision()
    engine.dispose()
