"""Dagster resources: the schedules database, the execution API, the grants and the clock."""

from graph_runs.resources.clock import ClockResource
from graph_runs.resources.database import DatabaseResource, ScheduleLimitsResource
from graph_runs.resources.dispatch import DispatchResource
from graph_runs.resources.execution_api import ExecutionApiResource
from graph_runs.resources.grants import GrantsResource

__all__ = [
    "ClockResource",
    "DatabaseResource",
    "DispatchResource",
    "ExecutionApiResource",
    "GrantsResource",
    "ScheduleLimitsResource",
]
