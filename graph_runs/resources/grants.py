"""Grant checks as a Dagster resource: every run is checked before any API call."""

import datetime as dt

import dagster as dg

from graph_runs.access.grants import Grant, GrantDenied, get_grant
from graph_runs.resources.database import DatabaseResource


class GrantsResource(dg.ConfigurableResource):
    """Looks grants up in the schedules database."""

    database: dg.ResourceDependency[DatabaseResource]

    def get(self, grant_id: str) -> Grant | None:
        """The grant, or None."""
        with self.database.engine().connect() as conn:
            return get_grant(conn, grant_id)

    def check(self, grant_id: str, graph_id: str, now: dt.datetime, *, owner: str) -> Grant:
        """The grant if it allows ``owner`` to run ``graph_id`` now; raise GrantDenied."""
        grant = self.get(grant_id)
        if grant is None:
            raise GrantDenied("grant_missing", f"grant {grant_id} does not exist")
        grant.check(graph_id, now, owner=owner)
        return grant
