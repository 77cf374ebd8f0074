"""Dagster resources: the schedules database, the execution API, the grants and the clock."""

from resources.clock import ClockResource
from resources.database import DatabaseResource, ScheduleLimitsResource
from resources.dispatch import DispatchResource
from resources.execution_api import ExecutionApiResource
from resources.grants import GrantsResource

__all__ = [
    "ClockResource",
    "DatabaseResource",
    "DispatchResource",
    "ExecutionApiResource",
    "GrantsResource",
    "ScheduleLimitsResource",
]
