"""``graph-runs execution-api serve``: the local execution API, for development and tests."""

from typing import TextIO

import click

from graph_runs.cli.support import emit, json_option
from graph_runs.settings import EXECUTION_API_TOKEN_VAR


@click.group("execution-api")
def execution_api() -> None:
    """The local execution API (demo graphs echo, sleep, fail, flaky)."""


@execution_api.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--token", envvar=EXECUTION_API_TOKEN_VAR, required=True, show_envvar=True)
@click.option(
    "--request-log",
    type=click.File("a"),
    help="Append each submission's arrival and each execution to this file, as JSON lines.",
)
@json_option
def execution_api_serve(
    host: str, port: int, token: str, request_log: TextIO | None, as_json: bool
) -> None:
    """Serve the execution API contract until interrupted."""
    import uvicorn

    from graph_runs.execution_api.local.server import ExecutionStore, create_app

    emit(
        as_json,
        {"url": f"http://{host}:{port}"},
        lambda d: f"execution API listening on {d['url']}",
    )
    store = ExecutionStore(request_log=request_log)
    uvicorn.run(create_app(token, store), host=host, port=port, log_level="warning")
