"""The tags a run of one schedule's partition is submitted with: the account that pays.

A run of ``graph_run_job`` launched from the Dagster UI (the launchpad with a partition
chosen, or a partition backfill) is a trigger-now billed by the schedule's current grant.
The run queue counts runs per billing account by tag when they leave the queue, before any
op runs, so the tag must be on the run when it is submitted: Dagster asks for a partition's
tags as it builds such a launch (the launchpad reads them through GraphQL, the backfill
daemon from the code server). The op then refuses a run whose tag is missing or names
another account.

The sensors' own runs on a partition carry their slot's account already and are marked
resolved (``resolved_partition_tags``), so Dagster neither asks here for them nor lets a
later change of the schedule's grant overwrite the account the slot was claimed under.
"""

import logging
from collections.abc import Callable, Mapping

import sqlalchemy as sa

from graph_runs.dispatch.ledger import BILLING_ACCOUNT_TAG
from graph_runs.resources.database import DatabaseResource
from graph_runs.store.tables import execution_grants, schedules

logger = logging.getLogger(__name__)

# Dagster's tag naming a run's partition; a request that has it is not resolved again.
PARTITION_TAG = "dagster/partition"


def billing_tags(database_url: Callable[[], str]) -> Callable[[str], Mapping[str, str]]:
    """The partition-tags function of ``graph_run_job`` for the database at ``database_url``.

    ``database_url`` is read when a launch asks, not when the definitions load, so a URL
    with a password (``GRAPH_RUNS_DATABASE_URL``) stays out of them.
    """

    def tags(schedule_id: str) -> Mapping[str, str]:
        query = (
            sa.select(execution_grants.c.billing_account)
            .select_from(
                schedules.join(execution_grants, schedules.c.grant_id == execution_grants.c.id)
            )
            .where(schedules.c.id == schedule_id)
        )
        try:
            with DatabaseResource(url=database_url()).engine().connect() as conn:
                account = conn.execute(query).scalar_one_or_none()
        except sa.exc.SQLAlchemyError as exc:
            # A launch form or a backfill must not break on an outage: the run is then
            # submitted untagged, and its op refuses it, naming the tag it needs.
            logger.warning(
                "billing account of schedule %s unknown: %s", schedule_id, type(exc).__name__
            )
            return {}
        return {} if account is None else {BILLING_ACCOUNT_TAG: account}

    return tags


def resolved_partition_tags(partition_key: str) -> dict[str, str]:
    """Tags that mark a sensor's run request on ``partition_key`` as already resolved."""
    return {PARTITION_TAG: partition_key}
