"""What every ``graph-runs`` command shares: ``--json``, the clock, one transaction, parsing.

Bad input raises ``InvalidInput`` naming the field; ``cli.main`` prints it as one line and
exits with status 2.
"""

import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from graph_runs.core.cron import parse_instant
from graph_runs.core.errors import InvalidInput
from graph_runs.settings import Settings, load_settings
from graph_runs.store.db import check_schema, make_engine

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    """Add ``--json`` to a command."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def now() -> dt.datetime:
    """The wall clock, to the second: the CLI is where real time enters."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def settings() -> Settings:
    """The settings from the environment, read in settings.py alone."""
    return load_settings()


@contextmanager
def transaction(check: bool = True) -> Iterator[sa.Connection]:
    """One transaction on the configured database, its schema checked first."""
    engine = make_engine(settings().database_url())
    try:
        if check:
            check_schema(engine)
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def emit(as_json: bool, data: Any, human: Callable[[Any], str]) -> None:
    """Print ``data`` as JSON, or as the human line(s) ``human`` makes of it."""
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human(data))


def instant(field: str, value: str | None) -> dt.datetime | None:
    """An ISO 8601 option value as an aware instant; InvalidInput names ``field``."""
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise InvalidInput(field, str(exc)) from None


def json_object(field: str, value: str | None) -> dict[str, Any]:
    """A JSON-object option value; InvalidInput names ``field``."""
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise InvalidInput(field, f"is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput(field, "is nested too deep to read") from None
    if not isinstance(parsed, dict):
        raise InvalidInput(field, "must be a JSON object")
    return parsed


def decimal(field: str, value: str) -> Decimal:
    """A finite decimal option value; InvalidInput names ``field``."""
    try:
        amount = Decimal(value)
    except ArithmeticError:
        raise InvalidInput(field, f"{value!r} is not a number") from None
    if not amount.is_finite():
        raise InvalidInput(field, f"{value!r} is not a number")
    return amount
