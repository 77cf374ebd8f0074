"""How long the API may still be running a fired slot's run, and so how long it is polled.

A slot that was fired is never given up on while its API run may be going (and spending):
not by a dispatch run's recovery (``batches``), the sensor's polls (``polling``) or the
settling of a run that ended without an outcome (``reconcile``).
"""

import datetime as dt
from typing import Any

# A slot's API run is polled for at most its timeout and this margin after it was fired;
# past that it is given up on (``dispatch_lost``, its API run id kept for reconcile).
GIVE_UP_MARGIN = dt.timedelta(minutes=10)
DEFAULT_RUN_TIMEOUT = dt.timedelta(hours=1)


def api_may_still_run(row: Any, now: dt.datetime, *, accepted: bool = True) -> bool:
    """Whether the API may still be running the slot's run, so it is polled on.

    ``accepted``: only a run the API acknowledged (its id is known). Without it, any slot
    that was fired counts: its request may have reached the API before its run died.
    """
    if row.started_at is None or (accepted and row.api_run_id is None):
        return False
    return now < give_up_at(row)


def give_up_at(row: Any) -> dt.datetime:
    """When a fired slot's API run stops being polled: its timeout and the margin after.

    Counted from its first call, not its fire: a slot that waited for its account's call
    place submitted that much later (``called_at``), and its API run ends that much later.
    """
    timeout = (
        dt.timedelta(seconds=row.timeout_seconds) if row.timeout_seconds else DEFAULT_RUN_TIMEOUT
    )
    return (row.called_at or row.started_at) + timeout + GIVE_UP_MARGIN
