"""``graph-runs grants``: create, list and revoke execution grants."""

from typing import Any

import click

from graph_runs.access import grants as grants_api
from graph_runs.cli.support import emit, instant, json_option, now, transaction
from graph_runs.scheduling.revocation import revoke_and_pause


def _grant_line(grant: dict[str, Any]) -> str:
    state = "revoked" if grant["revoked_at"] else "active"
    return (
        f"{grant['id']}  owner={grant['owner']}  billing={grant['billing_account']}  "
        f"scopes={','.join(grant['scopes'])}  expires={grant['expires_at'] or 'never'}  {state}"
    )


@click.group()
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
