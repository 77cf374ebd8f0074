"""What every request of the management API is served with: one object, made at start."""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from fastapi import Request

from graph_runs.core.schedule_spec import ScheduleLimits


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
    """

    engine: sa.Engine
    clock: Callable[[], dt.datetime]
    limits: ScheduleLimits
    dagster_ui_url: str | None = None
    idempotency_wait_seconds: float = 5.0


def api_context(request: Request) -> ApiContext:
    """The app's context (a FastAPI dependency)."""
    context: ApiContext = request.app.state.context
    return context
