"""The ``api`` fixture: the management API over real HTTP on a free loopback port.

It serves the test's database, with an app key, an owner-scoped key and grants for two owners.
"""

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from graph_runs.access.api_keys import SCOPES, create_api_key
from graph_runs.access.grants import create_grant
from graph_runs.api.app import create_app
from graph_runs.core.schedule_spec import ScheduleLimits
from tests.conftest import serving

START = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


class Clock:
    """The API's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class Api:
    url: str
    engine: sa.Engine
    clock: Clock
    app_token: str
    alice_token: str
    grants: dict[str, str]
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    def spec(self, owner: str = "alice", **fields: Any) -> dict[str, Any]:
        return {
            "owner": owner,
            "graph_id": "echo",
            "cron": "0 9 * * *",
            "timezone": "Europe/Berlin",
            "grant_id": self.grants[owner],
            "input": {"n": 1},
            **fields,
        }


def make_api(engine: sa.Engine, **options: Any) -> tuple[Any, Clock, str, str, dict[str, str]]:
    clock = Clock()
    with engine.begin() as conn:
        _, app_token = create_api_key(
            conn, name="app", owner=None, scopes=list(SCOPES), now=clock.now
        )
        _, alice_token = create_api_key(
            conn, name="alice's", owner="alice", scopes=list(SCOPES[:5]), now=clock.now
        )
        grants = {
            owner: create_grant(
                conn,
                owner=owner,
                billing_account=f"{owner}-billing",
                scopes=["graph:execute:*"],
                now=clock.now,
            ).id
            for owner in ("alice", "bob")
        }
    app = create_app(
        engine,
        clock=clock,
        limits=ScheduleLimits(),
        dagster_ui_url="http://dagster.test",
        **options,
    )
    return app, clock, app_token, alice_token, grants


@pytest.fixture
def api(engine: sa.Engine) -> Iterator[Api]:
    app, clock, app_token, alice_token, grants = make_api(engine, idempotency_wait_seconds=1.0)
    with serving(app) as url:
        running = Api(url, engine, clock, app_token, alice_token, grants)
        yield running
        for client in running.clients:
            client.close()
    app.state.context.dispose()
