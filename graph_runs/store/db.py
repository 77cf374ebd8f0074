"""Engines for the schedules database, and the schema version check.

SQLite is shared by the daemon, the code server and every run process, so each connection
gets WAL mode and a busy timeout. Postgres URLs are pinned to psycopg2: under SQLAlchemy 2.1
a bare ``postgresql://`` selects psycopg 3, which dagster-postgres cannot use.
"""

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY_OPTION = "graph_runs_read_only"


class SchemaError(RuntimeError):
    """The database schema is missing, older or newer than this code."""


def normalize_url(url: str) -> str:
    """Pin Postgres URLs to the psycopg2 driver; leave every other URL as it is."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, pool_size: int | None = None) -> sa.Engine:
    """Create an engine for ``url``, creating the SQLite file's folder if needed.

    ``pool_size`` sizes a server's pool (a server with many request threads); SQLite's
    connections are not pooled that way.
    """
    url = normalize_url(url)
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # values_plus_batch: a tick's batched UPDATEs (one per claimed schedule) go to the
        # server 100 at a time rather than one round trip each. Nothing reads the rowcount
        # of a batched statement, which this mode no longer makes exact.
        pool: dict[str, int] = {} if pool_size is None else {"pool_size": pool_size}
        return sa.create_engine(
            url, pool_pre_ping=True, executemany_mode="values_plus_batch", **pool
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling defers BEGIN; issue it ourselves so that
        # BEGIN IMMEDIATE semantics and savepoints behave (SQLAlchemy's documented recipe).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Take the write lock up front: a deferred transaction that reads, then writes, can
        # fail with "database is locked" without waiting for the busy timeout. A reading
        # transaction (see ``reading``) takes no lock: under WAL it reads a snapshot while
        # others write.
        reads_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN DEFERRED" if reads_only else "BEGIN IMMEDIATE")

    return engine


def database_now(conn: sa.Connection) -> dt.datetime:
    """The database server's clock, in UTC (to the millisecond on SQLite).

    The one clock every worker and the sensor share, whatever their own say.
    """
    if conn.dialect.name == "sqlite":
        text = conn.exec_driver_sql("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").scalar_one()
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    value: dt.datetime = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
    return value.astimezone(dt.UTC)


@contextmanager
def reading(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that only reads: on SQLite it does not hold the one write lock.

    For long reads (whole-ledger checks) that must not stall lease renewals and outcome
    writes for up to the busy timeout. A write in it fails on SQLite and is rolled back.
    """
    with engine.connect() as conn:
        conn.execution_options(**{READ_ONLY_OPTION: True})
        with conn.begin():
            yield conn


def alembic_config(engine: sa.Engine | None = None) -> Config:
    """An alembic configuration pointing at ``migrations/``, bound to ``engine`` if given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The newest migration this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations/versions holds no migration"
    return head


def current_revision(engine: sa.Engine) -> str | None:
    """The migration the database is at, or None when it has never been migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine) -> tuple[str | None, str]:
    """Apply every pending migration; returns the revisions before and after."""
    from alembic import command

    before = current_revision(engine)
    command.upgrade(alembic_config(engine), "head")
    return before, head_revision()


def check_schema(engine: sa.Engine) -> None:
    """Raise SchemaError, in one line naming the fix, unless the schema is at this code's head."""
    head = head_revision()
    try:
        current = current_revision(engine)
    except sa.exc.OperationalError as exc:
        raise SchemaError(f"cannot reach the schedules database: {exc.orig}") from exc
    if current == head:
        return
    if current is None:
        raise SchemaError("the schedules database has no schema yet: run `graph-runs db upgrade`")
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current in known:
        raise SchemaError(
            f"the schedules database is at revision {current}, older than this code's {head}: "
            "run `graph-runs db upgrade`"
        )
    raise SchemaError(
        f"the schedules database is at revision {current}, which this code does not know "
        f"(newest known: {head}): deploy a newer graph-runs"
    )


def insert_ignoring_conflicts(
    conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]
) -> int:
    """Insert ``rows``, skipping those that hit a unique constraint; returns how many went in.

    This is what makes a replayed tick or a retried op harmless: the unique constraints
    decide, not a read-then-write race.
    """
    if conn.dialect.name not in ("postgresql", "sqlite"):
        raise NotImplementedError(
            f"graph-runs supports SQLite and PostgreSQL, not {conn.dialect.name}"
        )
    # One statement per set of columns given: a batch takes its columns from its first row
    # and would silently drop a column that only later rows name. A column a row leaves out
    # takes its default, as in a plain INSERT.
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        by_columns.setdefault(tuple(row), []).append(row)
    inserted = 0
    for names, group in by_columns.items():
        if conn.dialect.name == "postgresql":
            inserted += _insert_unnested(conn, table, names, group)
            continue
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).on_conflict_do_nothing()
        if len(group) == 1:
            inserted += conn.execute(stmt.values(**group[0])).rowcount
        else:  # RETURNING makes the count exact for a batch.
            returning = stmt.returning(*table.primary_key.columns)
            inserted += len(conn.execute(returning, group).all())
    return inserted


def _insert_unnested(
    conn: sa.Connection, table: sa.Table, names: tuple[str, ...], rows: list[dict[str, Any]]
) -> int:
    """Postgres: one ``INSERT ... SELECT FROM unnest(arrays)`` for rows naming ``names``.

    An ``ON CONFLICT`` executemany goes to the server as one statement per row, and a
    multi-row VALUES list is parsed and planned per row: either was a third of a 1,000-slot
    tick. One array per column is one small statement whatever the number of rows. Each
    value goes through its column type's bind processing (awareness of times, JSON).
    """
    columns = [table.c[name] for name in names]
    arrays: dict[str, list[Any]] = {}
    casts = []
    for i, column in enumerate(columns):
        process = column.type.bind_processor(conn.dialect)
        values = [row[column.name] for row in rows]
        arrays[f"a{i}"] = [process(v) for v in values] if process else values
        casts.append(f"CAST(:a{i} AS {column.type.compile(dialect=conn.dialect)}[])")
    quote = conn.dialect.identifier_preparer.quote
    statement = sa.text(
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"SELECT * FROM unnest({', '.join(casts)}) ON CONFLICT DO NOTHING "
        f"RETURNING {', '.join(quote(c.name) for c in table.primary_key.columns)}"
    )
    return len(conn.execute(statement, arrays).all())
