"""Access: execution grants, the scoped, expiring, revocable right to run graphs for an owner.

Revoking a grant also pauses the schedules that use it; that lives with the schedule
lifecycle (``graph_runs.scheduling.revocation``), which this package sits below.
"""
