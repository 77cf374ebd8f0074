"""The execution API client as a Dagster resource; the token arrives through ``EnvVar``."""

import dagster as dg

from graph_runs.http.execution_client import ExecutionApiClient, RetryPolicy


class ExecutionApiResource(dg.ConfigurableResource):
    """Where the app's execution API lives and how hard to retry it."""

    base_url: str
    token: str
    max_attempts: int = 5
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    request_timeout_seconds: float = 30.0
    poll_interval_seconds: float = 2.0
    default_run_timeout_seconds: float = 3600.0

    def client(self) -> ExecutionApiClient:
        """A client configured from this resource."""
        return ExecutionApiClient(
            base_url=self.base_url,
            token=self.token,
            retry=RetryPolicy(
                max_attempts=self.max_attempts,
                base_seconds=self.backoff_base_seconds,
                max_seconds=self.backoff_max_seconds,
            ),
            request_timeout_seconds=self.request_timeout_seconds,
            poll_interval_seconds=self.poll_interval_seconds,
            default_run_timeout_seconds=self.default_run_timeout_seconds,
        )
