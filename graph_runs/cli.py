"""The ``graph-runs`` command line.

Every command takes ``--json`` for scripts. Bad input prints one line, ``error: ...``, and
exits with status 2; nothing is written, because each command runs in one transaction.
"""

import sys
from typing import Any

import click

from graph_runs import grants as grants_api
from graph_runs.approvals_cli import approvals, webhooks
from graph_runs.billing_cli import billing, budgets
from graph_runs.cli_support import (
    emit,
    instant,
    json_option,
    now,
    settings,
    transaction,
)
from graph_runs.db import SchemaError, make_engine, upgrade
from graph_runs.errors import GraphRunsError
from graph_runs.revocation import revoke_and_pause
from graph_runs.schedules_cli import schedules
from graph_runs.settings import EXECUTION_API_TOKEN_VAR, SettingsError


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
    engine = make_engine(settings().database_url())
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    emit(
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
    with transaction() as conn:
        grant = grants_api.create_grant(
            conn,
            owner=owner,
            billing_account=billing_account,
            scopes=list(scopes),
            now=now(),
            expires_at=instant("expires_at", expires_at),
            connection_ids=list(connection_ids),
        )
    emit(as_json, grant.as_dict(), _grant_line)


@grants.command("list")
@click.option("--owner")
@json_option
def grants_list(owner: str | None, as_json: bool) -> None:
    """List grants."""
    with transaction() as conn:
        rows = [g.as_dict() for g in grants_api.list_grants(conn, owner)]
    emit(as_json, rows, lambda d: "\n".join(_grant_line(g) for g in d) or "no grants")


@grants.command("revoke")
@click.argument("grant_id")
@click.option("--by", default="cli", help="Who revokes it (audited).")
@json_option
def grants_revoke(grant_id: str, by: str, as_json: bool) -> None:
    """Revoke a grant and pause the schedules that run under it; prints how many."""
    with transaction() as conn:
        grant, paused = revoke_and_pause(conn, grant_id, now=now(), by=by)
    emit(
        as_json,
        {**grant.as_dict(), "paused_schedules": paused},
        lambda d: f"{_grant_line(d)}\npaused {d['paused_schedules']} schedule(s) under it",
    )


# -- budgets, billing, approvals, webhooks --------------------------------------------

cli.add_command(budgets)
cli.add_command(billing)
cli.add_command(approvals)
cli.add_command(webhooks)

# -- schedules --------------------------------------------------------------------------


cli.add_command(schedules)


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

    emit(
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

    raise click.exceptions.Exit(run_dev(settings(), port=port, as_json=as_json))


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
