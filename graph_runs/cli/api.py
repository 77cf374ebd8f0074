"""``graph-runs api serve`` and ``graph-runs api-keys``: the management API and its keys."""

from typing import Any

import click

from graph_runs.access import api_keys as keys_api
from graph_runs.cli.support import emit, json_option, now, settings, transaction

DEFAULT_API_PORT = 8767


@click.group("api")
def api() -> None:
    """The HTTP management API (OpenAPI at /openapi.json, docs at /docs)."""


@api.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_API_PORT, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes: one per core the API may use (docs/benchmarks.md).",
)
@json_option
def api_serve(host: str, port: int, workers: int, as_json: bool) -> None:
    """Serve the management API until stopped; the database must be migrated."""
    import uvicorn

    from graph_runs.store.db import check_schema, make_engine

    # Checked here, once, so that a missing schema is one line and exit 2, not a worker's
    # crash; each worker makes its own app and engines (graph_runs/api/serve.py).
    engine = make_engine(settings().database_url())
    try:
        check_schema(engine)
    finally:
        engine.dispose()
    emit(as_json, {"url": f"http://{host}:{port}"}, lambda d: f"API listening on {d['url']}")
    uvicorn.run(
        "graph_runs.api.serve:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
    )


@api.command("openapi")
def api_openapi() -> None:
    """Print the OpenAPI document (``make openapi`` writes it to openapi.json)."""
    from graph_runs.api.document import openapi_text

    click.echo(openapi_text(), nl=False)


def _key_line(k: dict[str, Any]) -> str:
    state = "revoked" if k["revoked_at"] else "live"
    return (
        f"{k['id']}  {k['name']}  owner={k['owner'] or '(any)'}  {','.join(k['scopes'])}  {state}"
    )


@click.group("api-keys")
def api_keys() -> None:
    """Keys of the management API: the secret is shown once, at creation."""


@api_keys.command("create")
@click.option("--name", required=True, help="What the key is for (shown in lists).")
@click.option("--owner", help="Act for this owner only; without it the key may name any owner.")
@click.option(
    "--scopes",
    required=True,
    help=f"Comma-separated, of: {', '.join(keys_api.SCOPES)}",
)
@click.option("--by", default="cli", show_default=True, help="Who creates it (audited).")
@json_option
def api_keys_create(name: str, owner: str | None, scopes: str, by: str, as_json: bool) -> None:
    """Create a key and print its token once: it is stored only as a hash."""
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    with transaction() as conn:
        key, token = keys_api.create_api_key(
            conn, name=name, owner=owner, scopes=wanted, now=now(), by=by
        )
    emit(
        as_json,
        {**key.view(), "token": token},
        lambda d: f"{_key_line(d)}\ntoken (shown once, keep it secret): {d['token']}",
    )


@api_keys.command("list")
@json_option
def api_keys_list(as_json: bool) -> None:
    """List keys, revoked ones too; never a secret."""
    with transaction() as conn:
        rows = [k.view() for k in keys_api.list_api_keys(conn)]
    emit(as_json, rows, lambda d: "\n".join(_key_line(k) for k in d) or "no API keys")


@api_keys.command("revoke")
@click.argument("key_id")
@click.option("--by", default="cli", show_default=True, help="Who revokes it (audited).")
@json_option
def api_keys_revoke(key_id: str, by: str, as_json: bool) -> None:
    """Revoke a key: its next request gets 401."""
    with transaction() as conn:
        key = keys_api.revoke_api_key(conn, key_id, now=now(), by=by)
    emit(as_json, key.view(), _key_line)
