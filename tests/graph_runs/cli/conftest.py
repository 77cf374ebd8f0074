"""The ``cli_grant`` fixture: a grant created through ``graph-runs grants create``."""

import pytest


@pytest.fixture
def cli_grant(cli) -> str:
    code, data, _ = cli(
        "grants", "create", "--owner", "alice", "--billing-account", "acme",
        "--scope", "graph:execute:daily-digest", "--json",
    )  # fmt: skip
    assert code == 0
    return str(data["id"])
