"""The clock every sensor and op reads, so that tests can fix it at an exact instant."""

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import dagster as dg

from graph_runs.core.cron import parse_instant


class ClockResource(dg.ConfigurableResource):
    """The current time in UTC; ``fixed_now`` (ISO 8601) pins it for tests and replays."""

    fixed_now: str | None = None

    def now(self) -> dt.datetime:
        """The current instant, aware, in UTC, to the second."""
        if self.fixed_now:
            return parse_instant(self.fixed_now)
        return dt.datetime.now(dt.UTC).replace(microsecond=0)

    def timer(self) -> tuple[Callable[[], dt.datetime], Callable[[float], Awaitable[None]]]:
        """A precise clock and the sleep that goes with it, for firing slots at their instant.

        With ``fixed_now`` the clock starts there and moves only when something sleeps, so a
        dispatch run in a test fires at exact instants without waiting.
        """
        if not self.fixed_now:
            return (lambda: dt.datetime.now(dt.UTC)), asyncio.sleep
        current = [parse_instant(self.fixed_now)]

        async def sleep(seconds: float) -> None:
            current[0] += dt.timedelta(seconds=max(seconds, 0.0))
            await asyncio.sleep(0)

        return (lambda: current[0]), sleep
