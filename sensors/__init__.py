"""Dagster sensors of the graph-runs code location."""
