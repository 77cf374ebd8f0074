"""The one place that reads the process environment.

Everything else takes its configuration as arguments, so tests never need to patch
``os.environ`` or reload modules. Secrets are not read here: they reach Dagster resources
through ``dg.EnvVar`` so that their values never show in the UI.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DATABASE_URL_VAR = "GRAPH_RUNS_DATABASE_URL"
EXECUTION_API_URL_VAR = "GRAPH_RUNS_EXECUTION_API_URL"
EXECUTION_API_TOKEN_VAR = "GRAPH_RUNS_EXECUTION_API_TOKEN"
SENSOR_INTERVAL_VAR = "GRAPH_RUNS_SENSOR_INTERVAL_SECONDS"
HOME_VAR = "GRAPH_RUNS_HOME"

DEFAULT_EXECUTION_API_URL = "http://127.0.0.1:8765"
DEFAULT_SENSOR_INTERVAL_SECONDS = 30


class SettingsError(ValueError):
    """An environment variable holds a value graph-runs cannot use."""


@dataclass(frozen=True)
class Settings:
    """Non-secret configuration taken from the environment.

    Attributes:
        home: folder for local state (the SQLite database, Dagster's local storage).
        database_url_from_env: whether ``GRAPH_RUNS_DATABASE_URL`` is set; when it is, the
            URL travels as an ``EnvVar`` because it may carry a password.
        execution_api_url: base URL of the execution API.
        sensor_interval_seconds: minimum interval of ``graph_schedules_sensor``.
    """

    home: Path
    database_url_from_env: bool
    execution_api_url: str
    sensor_interval_seconds: int

    @property
    def default_database_url(self) -> str:
        """The SQLite database used when ``GRAPH_RUNS_DATABASE_URL`` is unset."""
        return f"sqlite:///{(self.home / 'graph_runs.db').resolve()}"

    def database_url(self, environ: Mapping[str, str] | None = None) -> str:
        """The database URL for command-line use, where no Dagster UI can leak it."""
        env = os.environ if environ is None else environ
        return env.get(DATABASE_URL_VAR) or self.default_database_url


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (the process environment by default)."""
    env = os.environ if environ is None else environ
    raw_interval = env.get(SENSOR_INTERVAL_VAR) or str(DEFAULT_SENSOR_INTERVAL_SECONDS)
    try:
        interval = int(raw_interval)
    except ValueError:
        raise SettingsError(f"{SENSOR_INTERVAL_VAR} must be a whole number of seconds, got {raw_interval!r}") from None
    if interval < 1:
        raise SettingsError(f"{SENSOR_INTERVAL_VAR} must be at least 1, got {interval}")
    return Settings(
        home=Path(env.get(HOME_VAR) or ".graph_runs"),
        database_url_from_env=bool(env.get(DATABASE_URL_VAR)),
        execution_api_url=(env.get(EXECUTION_API_URL_VAR) or DEFAULT_EXECUTION_API_URL).rstrip("/"),
        sensor_interval_seconds=interval,
    )
