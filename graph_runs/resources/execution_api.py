"""The execution API client as a Dagster resource; the token arrives through ``EnvVar``."""

import dagster as dg
import pydantic

from graph_runs.execution_api.client import ExecutionApiClient, RetryPolicy
from graph_runs.execution_api.concurrent_calls import ConcurrentCaller


class ExecutionApiResource(dg.ConfigurableResource):
    """Where the app's execution API lives and how hard to retry it."""

    base_url: str
    # Kept out of every repr: a resource's repr can reach a log or the UI.
    token: str = pydantic.Field(repr=False)
    max_attempts: int = 12
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    request_timeout_seconds: float = 30.0
    poll_interval_seconds: float = 2.0
    default_run_timeout_seconds: float = 3600.0

    def _retry(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_seconds=self.backoff_base_seconds,
            max_seconds=self.backoff_max_seconds,
        )

    def client(self) -> ExecutionApiClient:
        """A client configured from this resource."""
        return ExecutionApiClient(
            base_url=self.base_url,
            token=self.token,
            retry=self._retry(),
            request_timeout_seconds=self.request_timeout_seconds,
            poll_interval_seconds=self.poll_interval_seconds,
            default_run_timeout_seconds=self.default_run_timeout_seconds,
        )

    def concurrent_caller(self, max_concurrent: int, max_per_account: int) -> ConcurrentCaller:
        """The async caller a dispatch run fires its slots through."""
        return ConcurrentCaller(
            base_url=self.base_url,
            token=self.token,
            max_concurrent=max_concurrent,
            max_per_account=max_per_account,
            retry=self._retry(),
            request_timeout_seconds=self.request_timeout_seconds,
            poll_interval_seconds=self.poll_interval_seconds,
            default_run_timeout_seconds=self.default_run_timeout_seconds,
        )
