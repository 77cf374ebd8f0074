"""The one place that reads the process environment.

Everything else takes its configuration as arguments, so tests never need to patch
``os.environ`` or reload modules. Secrets that Dagster needs are not read here: they reach
its resources through ``dg.EnvVar`` so that their values never show in the UI. The webhook
server is no part of Dagster; ``webhook_secret`` reads its secret here, and only it.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from graph_runs.core.schedule_spec import ScheduleLimits

DATABASE_URL_VAR = "GRAPH_RUNS_DATABASE_URL"
EXECUTION_API_URL_VAR = "GRAPH_RUNS_EXECUTION_API_URL"
EXECUTION_API_TOKEN_VAR = "GRAPH_RUNS_EXECUTION_API_TOKEN"
SENSOR_INTERVAL_VAR = "GRAPH_RUNS_SENSOR_INTERVAL_SECONDS"
HOME_VAR = "GRAPH_RUNS_HOME"
MIN_INTERVAL_VAR = "GRAPH_RUNS_MIN_INTERVAL_SECONDS"
MAX_SCHEDULES_PER_OWNER_VAR = "GRAPH_RUNS_MAX_SCHEDULES_PER_OWNER"
MAX_INPUT_BYTES_VAR = "GRAPH_RUNS_MAX_INPUT_BYTES"
WEBHOOK_SECRET_VAR = "GRAPH_RUNS_WEBHOOK_SECRET"

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
        schedule_limits: operator-set bounds on what users may schedule.
    """

    home: Path
    database_url_from_env: bool
    execution_api_url: str
    sensor_interval_seconds: int
    schedule_limits: ScheduleLimits

    @property
    def default_database_url(self) -> str:
        """The SQLite database used when ``GRAPH_RUNS_DATABASE_URL`` is unset."""
        return f"sqlite:///{(self.home / 'graph_runs.db').resolve()}"

    def database_url(self, environ: Mapping[str, str] | None = None) -> str:
        """The database URL for command-line use, where no Dagster UI can leak it."""
        env = os.environ if environ is None else environ
        return env.get(DATABASE_URL_VAR) or self.default_database_url


def _whole_number(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (the process environment by default)."""
    env = os.environ if environ is None else environ
    defaults = ScheduleLimits()
    return Settings(
        home=Path(env.get(HOME_VAR) or ".graph_runs").resolve(),
        database_url_from_env=bool(env.get(DATABASE_URL_VAR)),
        execution_api_url=(env.get(EXECUTION_API_URL_VAR) or DEFAULT_EXECUTION_API_URL).rstrip("/"),
        sensor_interval_seconds=_whole_number(
            env, SENSOR_INTERVAL_VAR, DEFAULT_SENSOR_INTERVAL_SECONDS, 1
        ),
        schedule_limits=ScheduleLimits(
            min_interval_seconds=_whole_number(
                env, MIN_INTERVAL_VAR, defaults.min_interval_seconds, 60
            ),
            max_schedules_per_owner=_whole_number(
                env, MAX_SCHEDULES_PER_OWNER_VAR, defaults.max_schedules_per_owner, 1
            ),
            max_input_bytes=_whole_number(env, MAX_INPUT_BYTES_VAR, defaults.max_input_bytes, 2),
        ),
    )


def webhook_secret(environ: Mapping[str, str] | None = None) -> str:
    """The approvals webhook's shared HMAC secret; raises SettingsError when unset."""
    env = os.environ if environ is None else environ
    secret = env.get(WEBHOOK_SECRET_VAR, "")
    if not secret:
        raise SettingsError(f"{WEBHOOK_SECRET_VAR} must be set to the webhook's shared secret")
    return secret
