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
from graph_runs.execution_api.client import token_problem

DATABASE_URL_VAR = "GRAPH_RUNS_DATABASE_URL"
EXECUTION_API_URL_VAR = "GRAPH_RUNS_EXECUTION_API_URL"
EXECUTION_API_TOKEN_VAR = "GRAPH_RUNS_EXECUTION_API_TOKEN"
SENSOR_INTERVAL_VAR = "GRAPH_RUNS_SENSOR_INTERVAL_SECONDS"
HOME_VAR = "GRAPH_RUNS_HOME"
MIN_INTERVAL_VAR = "GRAPH_RUNS_MIN_INTERVAL_SECONDS"
MAX_SCHEDULES_PER_OWNER_VAR = "GRAPH_RUNS_MAX_SCHEDULES_PER_OWNER"
MAX_INPUT_BYTES_VAR = "GRAPH_RUNS_MAX_INPUT_BYTES"
WEBHOOK_SECRET_VAR = "GRAPH_RUNS_WEBHOOK_SECRET"
BATCH_SIZE_VAR = "GRAPH_RUNS_BATCH_SIZE"
MAX_CONCURRENT_CALLS_VAR = "GRAPH_RUNS_MAX_CONCURRENT_CALLS"
MAX_CALLS_PER_ACCOUNT_VAR = "GRAPH_RUNS_MAX_CALLS_PER_ACCOUNT"
SLOT_ASSET_EVENTS_VAR = "GRAPH_RUNS_SLOT_ASSET_EVENTS"
LAUNCH_ALLOWANCE_VAR = "GRAPH_RUNS_LAUNCH_ALLOWANCE_SECONDS"
DISPATCH_LEASE_VAR = "GRAPH_RUNS_DISPATCH_LEASE_SECONDS"
RUN_START_TIMEOUT_VAR = "GRAPH_RUNS_RUN_START_TIMEOUT_SECONDS"
HAND_OFF_VAR = "GRAPH_RUNS_DISPATCH_HAND_OFF_SECONDS"
PARALLEL_RUNS_VAR = "GRAPH_RUNS_PARALLEL_DISPATCH_RUNS"
ACCOUNT_BATCHES_VAR = "GRAPH_RUNS_ACCOUNT_BATCHES"
API_MAX_ATTEMPTS_VAR = "GRAPH_RUNS_API_MAX_ATTEMPTS"
API_REQUEST_TIMEOUT_VAR = "GRAPH_RUNS_API_REQUEST_TIMEOUT_SECONDS"
DAGSTER_UI_URL_VAR = "GRAPH_RUNS_DAGSTER_UI_URL"

DEFAULT_EXECUTION_API_URL = "http://127.0.0.1:8765"
DEFAULT_SENSOR_INTERVAL_SECONDS = 30


class SettingsError(ValueError):
    """An environment variable holds a value graph-runs cannot use."""


@dataclass(frozen=True)
class DispatchSettings:
    """How slots are batched and fired (docs/how-a-slot-fires.md).

    Attributes:
        batch_size: most slots one dispatch run fires. 2,500 by measurement (docs/benchmarks.md,
            Benchmarks): with the shipped dagster.yaml's four concurrent runs, 10,000
            slots at one instant are four runs, all up before the instant; batches of 500
            made twenty, fired in five waves of four, and tripled the p99 lag.
        parallel_runs: how many dispatch runs a burst is spread over, when it has 250 slots
            for each: the shipped dagster.yaml runs four at a time. Set it to the run
            queue's ``max_concurrent_runs``.
        account_batches: when a tick's due slots belong to at most this many billing
            accounts, each dispatch run fires one account's slots and carries its owner's
            tags (found from the Runs page); 0 mixes accounts always. Never more runs than
            ``parallel_runs``, nor a run for fewer than 50 slots, come of it: past that
            they would queue, or cost a launch each (docs/benchmarks.md).
        max_concurrent_calls: most execution API calls one dispatch run has in flight.
        max_calls_per_account: most execution API calls in flight for one billing account,
            over all runs at once (graph_runs/dispatch/call_places.py), so that one
            tenant's thousands of slots at 09:00 cannot starve the others.
        slot_asset_events: one asset event per slot outcome on its schedule's partition,
            announced by the slot events sensor.
        launch_allowance_seconds: how long a dispatch run takes to be up; slots are claimed
            this much (plus a sensor interval) ahead of their instant. 20 s keeps the
            default lookahead (50 s) under the shortest schedule interval (60 s), so a
            schedule has at most one slot claimed ahead.
        lease_seconds: how long a dispatch run's claim on its batch lasts without a
            heartbeat (renewed every quarter of it). It bounds how long the slots of a run
            whose worker died wait before the sensor dispatches them again.
        start_timeout_seconds: how long a dispatch run may take to start (Dagster's
            ``STARTING``: an image pull, a pod scheduled) before its batch goes to the next
            attempt. Keep it equal to run monitoring's ``start_timeout_seconds`` (180 in
            dagster.postgres.yaml); a lease's worth was too short on Kubernetes.
        hand_off_seconds: how long a dispatch run polls its slots' API runs after its last
            fire; then it hands those still going to the sensor, which polls them without
            holding a run, and ends. It bounds a dispatch run's life, well under run
            monitoring's ``max_runtime_seconds``, whatever the slots' timeouts.
    """

    batch_size: int = 2500
    parallel_runs: int = 4
    account_batches: int = 4
    max_concurrent_calls: int = 100
    max_calls_per_account: int = 25
    slot_asset_events: bool = True
    launch_allowance_seconds: int = 20
    lease_seconds: int = 60
    start_timeout_seconds: int = 180
    hand_off_seconds: int = 300


@dataclass(frozen=True)
class ApiSettings:
    """How hard the execution API is retried (docs/security.md).

    Attributes:
        max_attempts: tries of one request before its slot fails ``api_unavailable``. With
            the backoff (0.5 s doubling to 30 s) twelve ride out about three minutes of an
            API that answers 503, hangs or resets: a deploy of the API, not an outage.
        request_timeout_seconds: how long one request may take before it counts as failed
            and is retried (with the same idempotency key, so nothing runs twice).
    """

    max_attempts: int = 12
    request_timeout_seconds: int = 30


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
        dispatch: how slots are batched and fired.
        api: how hard the execution API is retried.
        dagster_home: ``DAGSTER_HOME``, where the command line finds Dagster's instance.
        dagster_ui_url: where the management API links each slot's Dagster run; None links
            nothing.
    """

    home: Path
    database_url_from_env: bool
    execution_api_url: str
    sensor_interval_seconds: int
    schedule_limits: ScheduleLimits
    dispatch: DispatchSettings = DispatchSettings()
    api: ApiSettings = ApiSettings()
    dagster_home: str | None = None
    dagster_ui_url: str | None = None

    @property
    def default_database_url(self) -> str:
        """The SQLite database used when ``GRAPH_RUNS_DATABASE_URL`` is unset."""
        return f"sqlite:///{(self.home / 'graph_runs.db').resolve()}"

    def database_url(self, environ: Mapping[str, str] | None = None) -> str:
        """The database URL, read when it is used, where no Dagster UI shows it.

        That is the command line, and the tags of a UI launch (``jobs.partition_tags``).
        """
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


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


# Set by `dagster dev` for every process it starts, the code servers among them.
DAGSTER_DEV_CLI_VAR = "DAGSTER_IS_DEV_CLI"
PLAIN_DAGSTER_DEV = (
    "graph-runs: plain `dagster dev` would run a second dispatcher on the schedules database "
    "with a throwaway Dagster instance; start the local stack with `make dev` "
    "(or `graph-runs dev`), or set DAGSTER_HOME to the instance you mean"
)


def check_not_plain_dagster_dev(environ: Mapping[str, str] | None = None) -> None:
    """Refuse to load under a bare `dagster dev`, which gives the code no instance of its own.

    It would tick the schedules sensor on the live schedules database from a temporary
    instance, beside the `make dev` stack's, and its runs vanish when it exits. `graph-runs
    dev` (and any deployment) sets DAGSTER_HOME.
    """
    env = os.environ if environ is None else environ
    if env.get(DAGSTER_DEV_CLI_VAR) == "1" and not env.get("DAGSTER_HOME"):
        raise SettingsError(PLAIN_DAGSTER_DEV)


def check_secrets(environ: Mapping[str, str] | None = None) -> None:
    """Refuse, when the code location loads, a secret that could never be sent.

    The error names the variable, never the value. The secret itself still reaches the
    resources only through ``EnvVar``.
    """
    env = os.environ if environ is None else environ
    token = env.get(EXECUTION_API_TOKEN_VAR)
    if token is not None:
        problem = token_problem(token)
        if problem is not None:
            raise SettingsError(problem)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (the process environment by default)."""
    env = os.environ if environ is None else environ
    defaults = ScheduleLimits()
    dispatch = DispatchSettings()
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
        dispatch=DispatchSettings(
            batch_size=_whole_number(env, BATCH_SIZE_VAR, dispatch.batch_size, 1),
            parallel_runs=_whole_number(env, PARALLEL_RUNS_VAR, dispatch.parallel_runs, 1),
            account_batches=_whole_number(env, ACCOUNT_BATCHES_VAR, dispatch.account_batches, 0),
            max_concurrent_calls=_whole_number(
                env, MAX_CONCURRENT_CALLS_VAR, dispatch.max_concurrent_calls, 1
            ),
            max_calls_per_account=_whole_number(
                env, MAX_CALLS_PER_ACCOUNT_VAR, dispatch.max_calls_per_account, 1
            ),
            slot_asset_events=_flag(env, SLOT_ASSET_EVENTS_VAR, dispatch.slot_asset_events),
            launch_allowance_seconds=_whole_number(
                env, LAUNCH_ALLOWANCE_VAR, dispatch.launch_allowance_seconds, 0
            ),
            lease_seconds=_whole_number(env, DISPATCH_LEASE_VAR, dispatch.lease_seconds, 5),
            start_timeout_seconds=_whole_number(
                env, RUN_START_TIMEOUT_VAR, dispatch.start_timeout_seconds, 1
            ),
            hand_off_seconds=_whole_number(env, HAND_OFF_VAR, dispatch.hand_off_seconds, 0),
        ),
        dagster_home=env.get("DAGSTER_HOME") or None,
        dagster_ui_url=(env.get(DAGSTER_UI_URL_VAR) or "").rstrip("/") or None,
        api=ApiSettings(
            max_attempts=_whole_number(env, API_MAX_ATTEMPTS_VAR, ApiSettings.max_attempts, 1),
            request_timeout_seconds=_whole_number(
                env, API_REQUEST_TIMEOUT_VAR, ApiSettings.request_timeout_seconds, 1
            ),
        ),
    )


def webhook_secret(environ: Mapping[str, str] | None = None) -> str:
    """The approvals webhook's shared HMAC secret; raises SettingsError when unset."""
    env = os.environ if environ is None else environ
    secret = env.get(WEBHOOK_SECRET_VAR, "")
    if not secret:
        raise SettingsError(f"{WEBHOOK_SECRET_VAR} must be set to the webhook's shared secret")
    return secret
