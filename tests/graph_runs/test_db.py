"""graph_runs.db and migrations/: the migration builds exactly tables.py.

The schema check names its fix, and the due query reads the partial index. Real SQLite and
PostgreSQL.
"""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from graph_runs.db import (
    SchemaError,
    check_schema,
    head_revision,
    make_engine,
    normalize_url,
    upgrade,
)
from graph_runs.tables import ACTIVE_SCHEDULE, metadata, schedules
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

    from graph_runs.db import alembic_config
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
