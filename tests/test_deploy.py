"""deploy/: least privilege and pinned versions in the compose file, the Helm values and the image.

Parsed as the tools parse them (YAML with merge keys; the Dockerfile's lines), since this
machine has neither Docker nor Helm: who gets the API token, where ports listen, which
database role the services use, and that no version floats.
"""

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from graph_runs.settings import DispatchSettings

# The longest sensor interval worth planning for (GRAPH_RUNS_SENSOR_INTERVAL_SECONDS).
SENSOR_INTERVAL_SECONDS_MAX = 300

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())[
        "services"
    ]
    return services


def _version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_only_the_code_server_whose_runs_call_the_api_gets_the_token() -> None:
    holders = {
        name
        for name, service in _compose().items()
        if "GRAPH_RUNS_EXECUTION_API_TOKEN" in (service.get("environment") or {})
    }
    assert holders == {"code-server"}


def test_published_ports_listen_on_loopback_only() -> None:
    published = [port for s in _compose().values() for port in s.get("ports", [])]
    assert published and all(str(port).startswith("127.0.0.1:") for port in published)


def test_services_use_a_role_that_is_no_superuser_and_no_password_is_written_down() -> None:
    text = (DEPLOY / "docker-compose.yaml").read_text()
    urls = re.findall(r"postgresql\+psycopg2://([^:]+):([^@]+)@", text)
    assert urls and {user for user, _ in urls} == {"graph_runs"}
    assert all(password.startswith("${GRAPH_RUNS_DB_PASSWORD:?") for _, password in urls)
    postgres = _compose()["postgres"]["environment"]
    assert "POSTGRES_USER" not in postgres  # the superuser is postgres, its password required
    assert postgres["POSTGRES_PASSWORD"].startswith("${GRAPH_RUNS_POSTGRES_SUPERUSER_PASSWORD:?")
    init = (DEPLOY / "postgres-init.sh").read_text()
    assert "CREATE ROLE graph_runs LOGIN PASSWORD :'app_password'" in init
    (sql,) = re.findall(r"<<'SQL'\n(.*?)\nSQL", init, re.S)
    assert not {"SUPERUSER", "CREATEROLE", "CREATEDB"} & set(sql.upper().split())


def test_no_image_or_base_floats() -> None:
    images = [s["image"] for s in _compose().values() if "image" in s]
    assert all(":" in image and not image.endswith(":latest") for image in images), images
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["image"]["tag"] == _version()
    assert f"graph-runs:{_version()}" in images
    (base,) = re.findall(r"^FROM (\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base


def test_the_helm_values_offer_a_read_only_webserver() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["dagsterWebserver"]["enableReadOnly"] is True


def test_the_image_leaves_local_state_and_secrets_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".graph_runs", ".env", "*.db"} <= ignored


def test_run_monitoring_never_kills_a_dispatch_run_that_works() -> None:
    # A dispatch run lives at most: a start, its lookahead (a sensor interval and the launch
    # allowance), then the hand-off wait and a lease to record; single runs carry their
    # own bound (dagster/max_runtime, from their slot's timeout).
    dispatch = DispatchSettings()
    longest = (
        dispatch.start_timeout_seconds
        + SENSOR_INTERVAL_SECONDS_MAX
        + dispatch.launch_allowance_seconds
        + dispatch.hand_off_seconds
        + dispatch.lease_seconds
    )
    instance = yaml.safe_load((ROOT / "dagster.postgres.yaml").read_text())
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    helm = values["dagsterDaemon"]["runMonitoring"]["maxRuntimeSeconds"]
    assert instance["run_monitoring"]["max_runtime_seconds"] == helm > 2 * longest
