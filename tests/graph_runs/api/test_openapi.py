"""The OpenAPI document, and schemathesis against a real server.

It is committed as openapi.json, equal to what the app generates, served at /openapi.json and
/docs, and every operation is fuzzed by schemathesis over real HTTP.
"""

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from graph_runs.api import models
from graph_runs.api.document import openapi_document
from graph_runs.api.examples import EXAMPLES
from graph_runs.store.db import make_engine
from tests.conftest import serving
from tests.graph_runs.api.conftest import Api, make_api

REPO = Path(__file__).resolve().parents[3]
# Examples per operation: 27 operations at 15 each run in about 30 s on two cores.
EXAMPLES_PER_OPERATION = 15


def test_committed_document_is_the_generated_one() -> None:
    committed = json.loads((REPO / "openapi.json").read_text())
    assert committed == openapi_document(), "openapi.json is stale: run `make openapi`"


def test_every_operation_is_documented_with_its_problems() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1")
    ids = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            ids.append(operation["operationId"])
            assert operation["summary"], (method, path)
            if path in ("/healthz", "/readyz"):
                continue
            for status in ("400", "401", "403", "404", "503"):
                content = operation["responses"][status]["content"]
                assert list(content) == ["application/problem+json"], (method, path, status)
            if method == "post":
                names = {p["name"] for p in operation.get("parameters", [])}
                assert "Idempotency-Key" in names, (method, path)
    assert len(ids) == len(set(ids))
    problem = document["components"]["schemas"]["Problem"]
    assert problem["examples"]


def test_docs_and_document_are_served(api: Api) -> None:
    client = api.client()
    assert client.get("/openapi.json").json() == openapi_document()
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@dataclass
class Served:
    url: str
    headers: dict[str, str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Served]:
    # One server for every operation's examples: they add to one database, as clients would.
    path = tmp_path_factory.mktemp("schemathesis") / "graph_runs.db"
    shutil.copyfile(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    app, _clock, app_token, _alice, _grants = make_api(engine)
    with serving(app) as url:
        yield Served(url, {"Authorization": f"Bearer {app_token}"})
    app.state.context.dispose()
    engine.dispose()


# The document the server serves (test_docs_and_document_are_served): loaded from it at
# collection, as schemathesis's own fixture loader fails under pytest 9.2.
schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
    derandomize=True,
)
def test_no_operation_answers_5xx_or_off_its_schema(
    case: schemathesis.Case, served: Served
) -> None:
    case.call_and_validate(
        base_url=served.url,
        headers=served.headers,
        checks=[
            not_a_server_error,
            content_type_conformance,
            response_schema_conformance,
            status_code_conformance,
        ],
    )


def test_every_success_answer_has_an_example_of_its_own_shape() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if not status.startswith("2"):
                    continue
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                name = ref.rsplit("/", 1)[1]
                assert schemas[name].get("examples"), (method, path, status, name)
    for name, example in EXAMPLES.items():
        getattr(models, name).model_validate(example)
    assert models.ApprovalOut.model_json_schema()["examples"][0]["run_status"]
