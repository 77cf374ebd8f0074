"""Tags that make a dispatch run findable from the Runs page by whose slots it fires.

Dagster's Runs page filters by tags (and partition) only. A batch whose slots all belong to
one owner gets ``graph_runs/owner``, and one whose slots are all one schedule's gets
``graph_runs/schedule_id`` too, the same tags a run of one slot carries. A batch that mixes
owners names none: a tag that named one of them would hide the others. The billing account
is left off on purpose: the run queue limits runs per account by that tag, and a batch run
must never wait behind an account's other runs.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from graph_runs.dispatch.ledger import TAG_PREFIX
from graph_runs.store.tables import run_ledger

OWNER_TAG = f"{TAG_PREFIX}owner"
SCHEDULE_ID_TAG = f"{TAG_PREFIX}schedule_id"
# Bind parameters per query: far below PostgreSQL's 65,535 and SQLite's 32,766.
CHUNK = 1_000


def shared_tags(conn: sa.Connection, batch_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Per batch, the owner (and schedule) every one of its slots shares; one query a chunk."""
    found: dict[str, dict[str, str]] = {}
    ids = list(batch_ids)
    for start in range(0, len(ids), CHUNK):
        rows = conn.execute(
            sa.select(
                run_ledger.c.batch_id,
                sa.func.min(run_ledger.c.owner).label("owner"),
                sa.func.max(run_ledger.c.owner).label("last_owner"),
                sa.func.min(run_ledger.c.schedule_id).label("schedule"),
                sa.func.max(run_ledger.c.schedule_id).label("last_schedule"),
                sa.func.count().label("rows"),
                sa.func.count(run_ledger.c.schedule_id).label("scheduled"),
            )
            .where(run_ledger.c.batch_id.in_(ids[start : start + CHUNK]))
            .group_by(run_ledger.c.batch_id)
        )
        for row in rows:
            tags: dict[str, str] = {}
            if row.owner == row.last_owner:
                tags[OWNER_TAG] = row.owner
                if row.schedule == row.last_schedule and row.scheduled == row.rows:
                    tags[SCHEDULE_ID_TAG] = row.schedule
            found[row.batch_id] = tags
    return found
