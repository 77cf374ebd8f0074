"""The OpenAPI document as this code generates it: what ``openapi.json`` must equal."""

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from graph_runs.api.app import create_app
from graph_runs.core.schedule_spec import ScheduleLimits


def openapi_document() -> dict[str, Any]:
    """The document, from an app that never connects (its engine is not used)."""
    app = create_app(
        sa.create_engine("sqlite://"),
        clock=lambda: dt.datetime.now(dt.UTC),
        limits=ScheduleLimits(),
    )
    return app.openapi()


def openapi_text() -> str:
    """The document as committed: indented, keys in the order FastAPI writes them."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"
