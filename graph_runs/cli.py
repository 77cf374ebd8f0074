"""The ``graph-runs`` command line.

Every command takes ``--json`` for scripts. Bad input prints one line, ``error: ...``, and
exits with status 2; nothing is written, because each command runs in one transaction.
"""

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from graph_runs import grants as grants_api
from graph_runs import ledger
from graph_runs import schedules as schedules_api
from graph_runs.cron import CronError, CronSchedule, format_utc, parse_instant
from graph_runs.db import SchemaError, check_schema, make_engine, upgrade
from graph_runs.errors import GraphRunsError, InvalidInput
from graph_runs.settings import EXECUTION_API_TOKEN_VAR, Settings, SettingsError, load_settings

F = TypeVar("F", bound=Callable[..., Any])
DESCRIBE_NEXT_FIRES = 10
MAX_PREVIEW = 10_000


def json_option(func: F) -> F:
    """Add ``--json`` to a command."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _settings() -> Settings:
    return load_settings()


@contextmanager
def _transaction(check: bool = True) -> Iterator[sa.Connection]:
    settings = _settings()
    engine = make_engine(settings.database_url())
    try:
        if check:
            check_schema(engine)
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def _emit(as_json: bool, data: Any, human: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human(data))


def _instant(field: str, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise InvalidInput(field, str(exc)) from None


def _json_object(field: str, value: str | None) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise InvalidInput(field, f"is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidInput(field, "must be a JSON object")
    return parsed


@click.group()
def cli() -> None:
    """graph-runs: users' scheduled AI graph runs, fired exactly once per slot by Dagster."""


# -- db ---------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """The schedules database."""


@db.command("upgrade")
@json_option
def db_upgrade(as_json: bool) -> None:
    """Apply pending migrations to GRAPH_RUNS_DATABASE_URL (or the local SQLite file)."""
    engine = make_engine(_settings().database_url())
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    _emit(
        as_json,
        {"from_revision": before, "to_revision": after},
        lambda d: f"schema at revision {d['to_revision']} (was {d['from_revision'] or 'empty'})",
    )


# -- grants -----------------------------------------------------------------------------


def _grant_line(grant: dict[str, Any]) -> str:
    state = "revoked" if grant["revoked_at"] else "active"
    return (
        f"{grant['id']}  owner={grant['owner']}  billing={grant['billing_account']}  "
        f"scopes={','.join(grant['scopes'])}  expires={grant['expires_at'] or 'never'}  {state}"
    )


@cli.group()
def grants() -> None:
    """Execution grants."""


@grants.command("create")
@click.option("--owner", required=True)
@click.option("--billing-account", required=True)
@click.option("--scope", "scopes", multiple=True, required=True, help="graph:execute:<graph|*>")
@click.option("--expires-at", help="ISO 8601 instant")
@click.option("--connection-id", "connection_ids", multiple=True)
@json_option
def grants_create(
    owner: str,
    billing_account: str,
    scopes: tuple[str, ...],
    expires_at: str | None,
    connection_ids: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a grant and print it, with its id."""
    with _transaction() as conn:
        grant = grants_api.create_grant(
            conn,
            owner=owner,
            billing_account=billing_account,
            scopes=list(scopes),
            now=_now(),
            expires_at=_instant("expires_at", expires_at),
            connection_ids=list(connection_ids),
        )
    _emit(as_json, grant.as_dict(), _grant_line)


@grants.command("list")
@click.option("--owner")
@json_option
def grants_list(owner: str | None, as_json: bool) -> None:
    """List grants."""
    with _transaction() as conn:
        rows = [g.as_dict() for g in grants_api.list_grants(conn, owner)]
    _emit(as_json, rows, lambda d: "\n".join(_grant_line(g) for g in d) or "no grants")


@grants.command("revoke")
@click.argument("grant_id")
@click.option("--by", default="cli", help="Who revokes it (audited).")
@json_option
def grants_revoke(grant_id: str, by: str, as_json: bool) -> None:
    """Revoke a grant; runs under it then fail with grant_revoked."""
    with _transaction() as conn:
        grant = grants_api.revoke_grant(conn, grant_id, now=_now(), by=by)
    _emit(as_json, grant.as_dict(), _grant_line)


# -- schedules --------------------------------------------------------------------------


def _schedule_line(s: dict[str, Any]) -> str:
    timing = f"cron={s['cron']!r} tz={s['timezone']}" if s["cron"] else f"run_at={s['run_at']}"
    state = s["status"] if s["enabled"] else f"{s['status']} (paused)"
    return (
        f"{s['id']}  owner={s['owner']}  graph={s['graph_id']}  {timing}  {state}  "
        f"next={s['next_run_at'] or '-'}  runs={s['runs_total']} ok={s['runs_succeeded']} "
        f"failed={s['runs_failed']}"
    )


@cli.group()
def schedules() -> None:
    """User schedules."""


@schedules.command("create")
@click.option("--owner", required=True)
@click.option("--graph", "graph_id", required=True)
@click.option("--cron", help="5-field cron expression, in --timezone")
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone")
@click.option("--grant", "grant_id", required=True)
@click.option("--input", "input_json", help="JSON object passed to the graph")
@click.option("--run-at", help="ISO 8601 instant, for a one-time schedule instead of --cron")
@click.option("--max-cost-usd")
@click.option("--timeout-seconds", type=int)
@json_option
def schedules_create(
    owner: str,
    graph_id: str,
    cron: str | None,
    timezone: str,
    grant_id: str,
    input_json: str | None,
    run_at: str | None,
    max_cost_usd: str | None,
    timeout_seconds: int | None,
    as_json: bool,
) -> None:
    """Create a schedule and print it, with its id."""
    raw: dict[str, Any] = {
        "owner": owner,
        "graph_id": graph_id,
        "input": _json_object("input", input_json),
        "cron": cron,
        "timezone": timezone,
        "run_at": _instant("run_at", run_at),
        "grant_id": grant_id,
        "max_cost_usd": None if max_cost_usd is None else _decimal("max_cost_usd", max_cost_usd),
        "timeout_seconds": timeout_seconds,
    }
    settings = _settings()
    with _transaction() as conn:
        view = schedules_api.create_schedule(conn, raw, limits=settings.schedule_limits, now=_now())
    _emit(as_json, view, _schedule_line)


def _decimal(field: str, value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except ArithmeticError:
        raise InvalidInput(field, f"{value!r} is not a number") from None
    if not amount.is_finite():
        raise InvalidInput(field, f"{value!r} is not a number")
    return amount


@schedules.command("list")
@click.option("--owner")
@json_option
def schedules_list(owner: str | None, as_json: bool) -> None:
    """List schedules that are not deleted."""
    with _transaction() as conn:
        rows = schedules_api.list_schedules(conn, owner)
    _emit(as_json, rows, lambda d: "\n".join(_schedule_line(s) for s in d) or "no schedules")


@schedules.command("pause")
@click.argument("schedule_id")
@click.option("--note", help="Why it is paused (kept and shown by describe).")
@json_option
def schedules_pause(schedule_id: str, note: str | None, as_json: bool) -> None:
    """Stop a schedule from firing."""
    with _transaction() as conn:
        view = schedules_api.pause_schedule(conn, schedule_id, now=_now(), note=note)
    _emit(as_json, view, _schedule_line)


@schedules.command("resume")
@click.argument("schedule_id")
@json_option
def schedules_resume(schedule_id: str, as_json: bool) -> None:
    """Fire again from now on; slots that passed while paused are not fired."""
    settings = _settings()
    with _transaction() as conn:
        view = schedules_api.resume_schedule(
            conn, schedule_id, now=_now(), limits=settings.schedule_limits
        )
    _emit(as_json, view, _schedule_line)


@schedules.command("delete")
@click.argument("schedule_id")
@json_option
def schedules_delete(schedule_id: str, as_json: bool) -> None:
    """Delete a schedule; its ledger and receipts stay, its partition goes."""
    with _transaction() as conn:
        deleted = schedules_api.delete_schedule(conn, schedule_id, now=_now())
    _emit(
        as_json,
        {"id": schedule_id, "deleted": deleted},
        lambda d: (
            f"{d['id']} deleted" if d["deleted"] else f"{d['id']} was not there; nothing to do"
        ),
    )


@schedules.command("describe")
@click.argument("schedule_id")
@json_option
def schedules_describe(schedule_id: str, as_json: bool) -> None:
    """Next fire times, counters and recent runs of a schedule."""
    with _transaction() as conn:
        view = schedules_api.get_schedule(conn, schedule_id)
        recent = ledger.recent_runs(conn, schedule_id)
    upcoming: list[str] = []
    if view["status"] == "active" and view["enabled"]:
        if view["cron"]:
            fires = CronSchedule(view["cron"], view["timezone"]).fires_after(
                parse_instant(view["next_run_at"]) - dt.timedelta(seconds=1)
                if view["next_run_at"]
                else _now()
            )
            upcoming = [format_utc(next(fires)) for _ in range(DESCRIBE_NEXT_FIRES)]
        elif view["next_run_at"]:
            upcoming = [view["next_run_at"]]
    data = {**view, "next_fire_times": upcoming, "recent_runs": recent}

    def human(d: dict[str, Any]) -> str:
        lines = [_schedule_line(d)]
        if d["pause_note"]:
            lines.append(f"paused at {d['paused_at']}: {d['pause_note']}")
        if d["last_error"]:
            lines.append(f"last error: {d['last_error']}")
        lines.append("next fire times: " + (", ".join(d["next_fire_times"]) or "none"))
        lines.append("recent runs:")
        for run in d["recent_runs"] or []:
            lines.append(
                f"  {run['scheduled_for'] or '-'}  {run['status']:<9}  "
                f"dagster={run['dagster_run_id'] or '-'}  cost_usd={run['cost_usd'] or '-'}"
            )
        if not d["recent_runs"]:
            lines.append("  none yet")
        return "\n".join(lines)

    _emit(as_json, data, human)


@schedules.command("preview")
@click.option("--cron", required=True)
@click.option("--timezone", default="UTC", show_default=True)
@click.option("--from", "start", required=True, help="ISO 8601 instant; fires strictly after it")
@click.option("--count", type=click.IntRange(1, MAX_PREVIEW), default=10, show_default=True)
@json_option
def schedules_preview(cron: str, timezone: str, start: str, count: int, as_json: bool) -> None:
    """Print the next fire instants in UTC, under the daylight-saving policy."""
    after = _instant("from", start)
    assert after is not None
    try:
        schedule = CronSchedule(cron, timezone)
    except CronError as exc:
        raise InvalidInput("timezone" if "time zone" in str(exc) else "cron", str(exc)) from None
    fires = schedule.fires_after(after)
    instants = [format_utc(next(fires)) for _ in range(count)]
    _emit(as_json, instants, lambda d: "\n".join(d))


# -- servers ----------------------------------------------------------------------------


@cli.group("execution-api")
def execution_api() -> None:
    """The local execution API (demo graphs echo, sleep, fail, flaky)."""


@execution_api.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--token", envvar=EXECUTION_API_TOKEN_VAR, required=True, show_envvar=True)
@json_option
def execution_api_serve(host: str, port: int, token: str, as_json: bool) -> None:
    """Serve the execution API contract until interrupted."""
    import uvicorn

    from graph_runs.execution_api.server import create_app

    _emit(
        as_json,
        {"url": f"http://{host}:{port}"},
        lambda d: f"execution API listening on {d['url']}",
    )
    uvicorn.run(create_app(token), host=host, port=port, log_level="warning")


@cli.command("dev")
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@json_option
def dev(port: int, as_json: bool) -> None:
    """Migrate, seed a demo, and run the execution API, the Dagster webserver and daemon."""
    from graph_runs.devserver import run_dev

    raise click.exceptions.Exit(run_dev(_settings(), port=port, as_json=as_json))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every user error is one line on stderr and exit status 2."""
    try:
        cli.main(args=argv, prog_name="graph-runs", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return 2
    except (GraphRunsError, SchemaError, SettingsError) as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
