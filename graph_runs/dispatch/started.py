"""A slot started in a run of its own: its grant is checked before its one call.

An approved slot and a partition run launched from the UI are started by
``ledger.start_run`` in their run, not fired at an instant by ``firing``; this is their
check, shared by the dispatch job's op and the fault simulator, so that both run one rule.
"""

import datetime as dt
from typing import Any

import sqlalchemy as sa

from graph_runs.access.grants import GrantDenied, get_grant
from graph_runs.core.statuses import NEVER_RAN
from graph_runs.dispatch.ledger import FAILED, record_outcome, request_body
from graph_runs.execution_api.client import Outcome


def check_started(
    conn: sa.Connection, row: Any, *, dagster_run_id: str, now: dt.datetime
) -> dict[str, Any] | GrantDenied | None:
    """The request body of a started row, or why it makes no call.

    None for a slot settled before its run started (cancelled, say), or failed and not
    refired (``ledger.start_run``): no call, nothing to record. A ``GrantDenied`` is
    already recorded as the row's failed outcome, in ``conn``'s transaction, so a refused
    slot is never left running.
    """
    if row.status in NEVER_RAN or row.status == FAILED:
        return None
    grant = get_grant(conn, row.grant_id)
    try:
        if grant is None:
            raise GrantDenied("grant_missing", f"grant {row.grant_id} does not exist")
        grant.check(row.graph_id, now, owner=row.owner)
    except GrantDenied as denied:
        outcome = Outcome(status=FAILED, error_code=denied.code, error_message=denied.message)
        record_outcome(conn, row.id, outcome, dagster_run_id=dagster_run_id, now=now)
        return denied
    return request_body(row, grant.connection_ids)
