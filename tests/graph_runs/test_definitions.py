"""graph_runs.definitions: the code location loads, with the names workspace.yaml promises.

Loads the module as Dagster would (in a process of its own where the environment matters);
no database is touched at import.
"""

import os
import subprocess
import sys

import dagster as dg
import pytest

from graph_runs.definitions import build_definitions
from graph_runs.settings import PLAIN_DAGSTER_DEV, SettingsError, load_settings


def test_definitions_load_with_the_documented_names(tmp_path) -> None:
    settings = load_settings(
        {"GRAPH_RUNS_HOME": str(tmp_path), "GRAPH_RUNS_SENSOR_INTERVAL_SECONDS": "7"}
    )
    defs = build_definitions(settings)
    defs.validate_loadable(defs)
    sensor = defs.resolve_sensor_def("graph_schedules_sensor")
    assert sensor.minimum_interval_seconds == 7
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    job = defs.resolve_job_def("graph_run_job")
    assert isinstance(job.partitions_def, dg.DynamicPartitionsDefinition)
    assert defs.resolve_job_def("graph_run_adhoc_job").partitions_def is None
    assert not (tmp_path / "graph_runs.db").exists()


def test_secrets_reach_resources_as_env_vars_not_values(tmp_path) -> None:
    settings = load_settings(
        {"GRAPH_RUNS_HOME": str(tmp_path), "GRAPH_RUNS_DATABASE_URL": "postgresql://u:pw@h/db"}
    )
    resources = build_definitions(settings).resources
    assert isinstance(resources["execution_api"].resource.token, dg.EnvVar)  # type: ignore[union-attr]
    assert isinstance(resources["database"].resource.url, dg.EnvVar)  # type: ignore[union-attr]


def test_module_entry_point_exposes_defs() -> None:
    from graph_runs import definitions

    assert isinstance(definitions.defs, dg.Definitions)


def test_dispatch_settings_reach_the_resource_and_the_lease_paces_the_heartbeat(tmp_path) -> None:
    settings = load_settings(
        {
            "GRAPH_RUNS_HOME": str(tmp_path),
            "GRAPH_RUNS_BATCH_SIZE": "250",
            "GRAPH_RUNS_PARALLEL_DISPATCH_RUNS": "8",
            "GRAPH_RUNS_DISPATCH_LEASE_SECONDS": "20",
        }
    )
    dispatch = build_definitions(settings).resources["dispatch"].resource  # type: ignore[union-attr]
    assert (dispatch.batch_size, dispatch.parallel_runs) == (250, 8)  # type: ignore[union-attr]
    limits = dispatch.limits()  # type: ignore[union-attr]
    assert (limits.lease.total_seconds(), limits.heartbeat_seconds) == (20, 5)


def test_a_lease_too_short_to_renew_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(SettingsError, match="GRAPH_RUNS_DISPATCH_LEASE_SECONDS must be at least 5"):
        load_settings({"GRAPH_RUNS_HOME": str(tmp_path), "GRAPH_RUNS_DISPATCH_LEASE_SECONDS": "2"})


def test_api_retry_settings_reach_the_resource_and_ride_out_minutes_by_default(tmp_path) -> None:
    defaults = build_definitions(load_settings({"GRAPH_RUNS_HOME": str(tmp_path)}))
    api = defaults.resources["execution_api"].resource  # type: ignore[union-attr]
    assert (api.max_attempts, api.request_timeout_seconds) == (12, 30)  # type: ignore[union-attr]
    # The backoff before the last attempt adds up to about three minutes.
    policy = api._retry()  # type: ignore[union-attr]
    assert 170 < sum(policy.delay(n, None) for n in range(1, policy.max_attempts)) < 200
    settings = load_settings(
        {
            "GRAPH_RUNS_HOME": str(tmp_path),
            "GRAPH_RUNS_API_MAX_ATTEMPTS": "3",
            "GRAPH_RUNS_API_REQUEST_TIMEOUT_SECONDS": "2",
        }
    )
    api = build_definitions(settings).resources["execution_api"].resource  # type: ignore[union-attr]
    assert (api.max_attempts, api.request_timeout_seconds) == (3, 2)  # type: ignore[union-attr]
    with pytest.raises(SettingsError, match="GRAPH_RUNS_API_MAX_ATTEMPTS must be at least 1"):
        load_settings({"GRAPH_RUNS_HOME": str(tmp_path), "GRAPH_RUNS_API_MAX_ATTEMPTS": "0"})


def _load_in_a_process(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    environ.update(GRAPH_RUNS_HOME=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, "-c", "import graph_runs.definitions"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plain_dagster_dev_stops_at_load_saying_to_use_make_dev(tmp_path) -> None:
    # Issue 22: bare `dagster dev` (which sets DAGSTER_IS_DEV_CLI and, without DAGSTER_HOME,
    # a throwaway instance) started a second dispatcher on the live schedules database.
    refused = _load_in_a_process(tmp_path, DAGSTER_IS_DEV_CLI="1")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].endswith(PLAIN_DAGSTER_DEV)
    assert "`make dev`" in PLAIN_DAGSTER_DEV
    # `graph-runs dev` gives it an instance, and so does any deployment.
    home = tmp_path / "dagster"
    assert (
        _load_in_a_process(tmp_path, DAGSTER_IS_DEV_CLI="1", DAGSTER_HOME=str(home)).returncode == 0
    )
    assert _load_in_a_process(tmp_path).returncode == 0
