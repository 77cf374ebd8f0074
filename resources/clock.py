"""The clock every sensor and op reads, so that tests can fix it at an exact instant."""

import datetime as dt

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
