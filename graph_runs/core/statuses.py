"""The statuses of a ledger row, and which of them are still in flight.

A row is ``pending`` when the sensor has claimed it, ``queued`` once a Dagster run exists,
``running`` once the op has started, and then ends in one of the final statuses. ``failed``
alone may change again, when a re-execution succeeds. A slot that needs approval waits as
``awaiting_approval``, outside the in-flight set (it holds no run, so it does not hold back
the schedule's later slots), until the approvals sensor launches it or settles it.

Which status may follow which is ``graph_runs.store.slot_status.TRANSITIONS``, the one place that
changes a row's status.
"""

PENDING = "pending"  # claimed; Dagster may not have a run for it yet
BUFFERED = "buffered"  # waits for the schedule's running run to end (overlap buffer_one)
QUEUED = "queued"  # a Dagster run exists and has not started the op yet
RUNNING = "running"
CANCELLING = "cancelling"  # asked to stop; the sensor cancels or terminates its Dagster run
SUCCEEDED = "succeeded"
FAILED = "failed"
MISSED = "missed"  # came due while nothing could fire it, beyond the catch-up policy
SKIPPED_OVERLAP = "skipped_overlap"  # the previous run was still going (skip, buffer_one)
SKIPPED_PAUSED = "skipped_paused"  # came due while the schedule was paused
SKIPPED_BUDGET = "skipped_budget"  # came due while its billing account was at its budget
CANCELLED = "cancelled"  # never ran, or was stopped: paused, deleted, cancel_other
# The human approval gate (schedules created with --requires-approval):
AWAITING_APPROVAL = "awaiting_approval"  # came due; waits for a decision, no run yet
REJECTED = "rejected"  # a human said no; the API was never called
SKIPPED_UNAPPROVED = "skipped_unapproved"  # nobody decided in time and on-timeout is skip

IN_FLIGHT = frozenset({PENDING, BUFFERED, QUEUED, RUNNING, CANCELLING})
FIRING = frozenset({PENDING, BUFFERED})
# Final statuses that nothing changes: not a re-execution, not a late outcome.
NEVER_RAN = frozenset(
    {
        MISSED,
        SKIPPED_OVERLAP,
        SKIPPED_PAUSED,
        SKIPPED_BUDGET,
        CANCELLED,
        REJECTED,
        SKIPPED_UNAPPROVED,
    }
)
SETTLED = NEVER_RAN | {SUCCEEDED}
# A slot's outcome: each move into one of these is announced on its schedule's partition
# (graph_runs/jobs/slot_events.py); ``failed`` may be announced again with a later outcome.
FINAL = NEVER_RAN | {SUCCEEDED, FAILED}
