"""What every request of the management API is served with: one object, made at start."""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import sqlalchemy as sa
from fastapi import Request

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.store.db import READ_ONLY_OPTION

T = TypeVar("T")
# Connections of the reading engine: the server's threads (anyio's 40) wait on no pool.
READ_POOL_SIZE = 20
READ_POOL_OVERFLOW = 20


def reading_engine(engine: sa.Engine) -> sa.Engine:
    """An engine for reads: one round trip a statement, where the writer's costs three.

    On Postgres, autocommit (no BEGIN, no ROLLBACK at check-in) and no ping at check-out: a
    read on a connection the server dropped is retried once, on a new one (``read``). On
    SQLite, a reading transaction, which takes no write lock (``store.db.reading``).
    """
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{READ_ONLY_OPTION: True})
    return sa.create_engine(
        engine.url.render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
        pool_size=READ_POOL_SIZE,
        max_overflow=READ_POOL_OVERFLOW,
    )


@dataclass(frozen=True)
class ApiContext:
    """The database, the clock and the operator's limits, for every route.

    Attributes:
        engine: the schedules database.
        clock: the time writes are stamped with; tests pass their own.
        limits: what users may schedule (the CLI's settings).
        dagster_ui_url: where slots link their Dagster runs; None links nothing.
        idempotency_wait_seconds: how long a request waits for another holding its
            Idempotency-Key before it answers 409.
        reader: the engine reads go through (``reading_engine``).
    """

    engine: sa.Engine
    clock: Callable[[], dt.datetime]
    limits: ScheduleLimits
    dagster_ui_url: str | None = None
    idempotency_wait_seconds: float = 5.0
    reader: sa.Engine = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reader", reading_engine(self.engine))

    def read(self, work: Callable[[sa.Connection], T]) -> T:
        """``work``'s answer on a reading connection; ``work`` must write nothing.

        A connection the database dropped (a restart, a failover) fails its first statement
        and is discarded with the rest of the pool; the read then runs once more.
        """
        for attempt in (1, 2):
            try:
                with self.reader.connect() as conn:
                    return work(conn)
            except sa.exc.DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        """Close the reading engine's connections (the writer's are the caller's)."""
        if self.reader is not self.engine and self.reader.dialect.name != "sqlite":
            self.reader.dispose()


async def api_context(request: Request) -> ApiContext:
    """The app's context (a FastAPI dependency; async, so that it costs no thread hop)."""
    context: ApiContext = request.app.state.context
    return context
