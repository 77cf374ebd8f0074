"""The Dagster jobs: dispatch runs for scheduled slots, one run per ad-hoc request."""

from graph_runs.jobs.dispatch import dispatch_batch_job, graph_run_job
from graph_runs.jobs.partitions import (
    SCHEDULE_PARTITIONS_NAME,
    SLOT_ASSET_KEY,
    schedule_partitions,
    scheduled_graph_runs,
)
from graph_runs.jobs.single import GraphRunRequest, graph_run_adhoc_job

__all__ = [
    "SCHEDULE_PARTITIONS_NAME",
    "SLOT_ASSET_KEY",
    "GraphRunRequest",
    "dispatch_batch_job",
    "graph_run_adhoc_job",
    "graph_run_job",
    "schedule_partitions",
    "scheduled_graph_runs",
]
