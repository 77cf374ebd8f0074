"""The schedules database as a Dagster resource."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import sqlalchemy as sa

from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.store.db import check_schema, make_engine

_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()


class DatabaseResource(dg.ConfigurableResource):
    """SQLite or Postgres, chosen by ``url``; pass a URL with a password through ``EnvVar``."""

    url: str

    def engine(self) -> sa.Engine:
        """One pooled engine per URL and process, reused across sensor ticks and ops."""
        with _engines_lock:
            engine = _engines.get(self.url)
            if engine is None:
                engine = _engines[self.url] = make_engine(self.url)
            return engine

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A connection in a transaction that commits on success and rolls back on error."""
        with self.engine().begin() as conn:
            yield conn

    def check_schema(self) -> None:
        """Raise SchemaError, naming the command that fixes it, unless the schema is current."""
        check_schema(self.engine())


class ScheduleLimitsResource(dg.ConfigurableResource):
    """Operator-set bounds on what users may schedule (see ``ScheduleLimits``)."""

    min_interval_seconds: int = ScheduleLimits.min_interval_seconds
    max_schedules_per_owner: int = ScheduleLimits.max_schedules_per_owner
    max_input_bytes: int = ScheduleLimits.max_input_bytes

    def limits(self) -> ScheduleLimits:
        """The limits as the domain code takes them."""
        return ScheduleLimits(
            min_interval_seconds=self.min_interval_seconds,
            max_schedules_per_owner=self.max_schedules_per_owner,
            max_input_bytes=self.max_input_bytes,
        )
