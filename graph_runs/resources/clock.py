"""The clock every sensor and op reads.

It has no fields: what time it is must not be settable from a run config (a run launched
with a clock in the past would pass an expired grant, or date a receipt outside its
month). Tests subclass it with a fixed instant (``tests/dagster_helpers.FixedClock``).
"""

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import dagster as dg


class ClockResource(dg.ConfigurableResource):
    """The current time in UTC."""

    def now(self) -> dt.datetime:
        """The current instant, aware, in UTC, to the second."""
        return dt.datetime.now(dt.UTC).replace(microsecond=0)

    def timer(self) -> tuple[Callable[[], dt.datetime], Callable[[float], Awaitable[None]]]:
        """A precise clock and the sleep that goes with it, for firing slots at their instant."""
        return (lambda: dt.datetime.now(dt.UTC)), asyncio.sleep
