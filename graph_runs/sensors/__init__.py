"""Dagster sensors of the code location: the schedules sensor and the approvals sensor."""
