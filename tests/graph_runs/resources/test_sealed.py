"""graph_runs.resources.sealed: no run config can redirect a resource or set the clock.

Builds the real definitions and launches their jobs in-process with run configs that try to
override what a launch must never change. Touches no database: the config is refused before
any run exists.
"""

from typing import Any

import dagster as dg
import pytest

from graph_runs.definitions import build_definitions
from graph_runs.settings import EXECUTION_API_TOKEN_VAR, load_settings

OVERRIDES: list[tuple[str, dict[str, Any]]] = [
    ("execution_api", {"base_url": "http://127.0.0.1:9/steal"}),
    ("execution_api", {"token": {"env": EXECUTION_API_TOKEN_VAR}}),
    ("database", {"url": "sqlite:////tmp/elsewhere.db"}),
    ("clock", {"fixed_now": "2020-01-01T00:00:00Z"}),
    ("grants", {"database": {"url": "sqlite:////tmp/elsewhere.db"}}),
    ("dispatch", {"lease_seconds": 86_400}),
]
JOBS = ["graph_run_adhoc_job", "graph_run_job", "dispatch_batch_job", "reconcile_job"]


@pytest.fixture
def defs(tmp_path: Any) -> dg.Definitions:
    return build_definitions(load_settings({"GRAPH_RUNS_HOME": str(tmp_path)}))


@pytest.mark.parametrize("job_name", JOBS)
@pytest.mark.parametrize(("key", "config"), OVERRIDES, ids=lambda v: str(v)[:20])
def test_a_run_config_that_overrides_a_resource_is_refused_before_the_run_exists(
    defs: dg.Definitions, job_name: str, key: str, config: dict[str, Any]
) -> None:
    job = defs.resolve_job_def(job_name)
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        job.execute_in_process(
            run_config={"resources": {key: {"config": config}}}, instance=instance
        )
    field = next(iter(config))
    assert f'unexpected config entry "{field}"' in str(refused.value)
    assert f"resources:{key}:config" in str(refused.value)
    assert instance.get_runs_count() == 0


def test_a_sealed_resource_still_reads_its_secret_from_the_environment_when_used(
    defs: dg.Definitions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EXECUTION_API_TOKEN_VAR, "a-token-read-at-init")
    with dg.build_resources({"execution_api": defs.resources["execution_api"]}) as resources:
        api = resources.execution_api
    assert api.token == "a-token-read-at-init"
    assert api.base_url == "http://127.0.0.1:8765"
    # The definitions themselves hold the variable's name, never its value.
    assert defs.resources["execution_api"].resource.token == EXECUTION_API_TOKEN_VAR  # type: ignore[union-attr]


def test_the_production_clock_has_no_field_to_pin() -> None:
    from graph_runs.resources import ClockResource

    assert ClockResource.model_fields == {}
