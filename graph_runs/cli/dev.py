"""``graph-runs dev``: everything a new user needs to see a first run, in one command.

It migrates the local database, seeds a demo grant and an every-minute demo schedule (unless
they exist), starts the local execution API and ``dagster dev`` with DAGSTER_HOME under
``.graph_runs/``, and stops both on Ctrl-C.
"""

import dataclasses
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import click
import sqlalchemy as sa

from graph_runs.access.api_keys import SCOPES, authenticate, create_api_key
from graph_runs.access.grants import create_grant, list_grants
from graph_runs.cli.api import DEFAULT_API_PORT
from graph_runs.cli.support import json_option
from graph_runs.cli.support import settings as load_settings
from graph_runs.scheduling.schedules import create_schedule, list_schedules
from graph_runs.settings import (
    DAGSTER_UI_URL_VAR,
    EXECUTION_API_TOKEN_VAR,
    EXECUTION_API_URL_VAR,
    HOME_VAR,
    SENSOR_INTERVAL_VAR,
    Settings,
)
from graph_runs.store.db import make_engine, upgrade

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_OWNER = "demo"
DEV_SENSOR_INTERVAL_SECONDS = "10"


def seed_demo(conn: sa.Connection, settings: Settings, now: dt.datetime) -> list[str]:
    """Create the demo grant and schedule unless the demo owner has them; returns what it did."""
    done = []
    usable = [
        g
        for g in list_grants(conn, DEMO_OWNER)
        if g.revoked_at is None and (g.expires_at is None or g.expires_at > now)
    ]
    grant = usable[0] if usable else None
    if grant is None:
        grant = create_grant(
            conn,
            owner=DEMO_OWNER,
            billing_account="demo-billing",
            scopes=["graph:execute:*"],
            now=now,
            actor="graph-runs dev",
        )
        done.append(f"created demo grant {grant.id}")
    if not list_schedules(conn, DEMO_OWNER):
        view = create_schedule(
            conn,
            {
                "owner": DEMO_OWNER,
                "graph_id": "echo",
                "input": {"message": "hello from graph-runs"},
                "cron": "* * * * *",
                "timezone": "UTC",
                "grant_id": grant.id,
            },
            limits=settings.schedule_limits,
            now=now,
            actor="graph-runs dev",
        )
        done.append(f"created every-minute demo schedule {view['id']} (graph echo)")
    return done


def _dev_token(home: Path) -> str:
    """The local API token: from the environment, else one generated once and kept locally."""
    given = os.environ.get(EXECUTION_API_TOKEN_VAR)
    if given:
        return given
    path = home / "dev-execution-api-token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _dev_api_key(conn: sa.Connection, home: Path, now: dt.datetime) -> Path:
    """A management API key with every scope, made once; its token is kept in a 0600 file."""
    path = home / "dev-api-key"
    if path.exists() and authenticate(conn, path.read_text().strip()) is not None:
        return path
    _, token = create_api_key(
        conn, name="graph-runs dev", owner=None, scopes=list(SCOPES), now=now, by="graph-runs dev"
    )
    path.write_text(token)
    path.chmod(0o600)
    return path


def _interrupt(signum: int, _frame: object) -> None:
    """Treat SIGTERM like Ctrl-C, so that the children are stopped either way."""
    raise KeyboardInterrupt


def run_dev(
    settings: Settings,
    *,
    port: int,
    as_json: bool,
    api_port: int | None = None,
    management_port: int = DEFAULT_API_PORT,
) -> int:
    """Run the local stack in the foreground; returns the exit status.

    ``api_port`` moves the local execution API (and every process's URL of it) to that
    port of 127.0.0.1, for a machine where 8765 is taken. ``management_port`` is the
    management API's (``graph-runs api serve``).
    """
    if api_port is not None:
        settings = dataclasses.replace(settings, execution_api_url=f"http://127.0.0.1:{api_port}")
    home = settings.home
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")

    engine = make_engine(settings.database_url())
    try:
        upgrade(engine)
        with engine.begin() as conn:
            started = dt.datetime.now(dt.UTC).replace(microsecond=0)
            seeded = seed_demo(conn, settings, started)
            key_file = _dev_api_key(conn, home, started)
    finally:
        engine.dispose()

    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        HOME_VAR: str(home),
        EXECUTION_API_TOKEN_VAR: _dev_token(home),
        EXECUTION_API_URL_VAR: settings.execution_api_url,
    }
    env.setdefault(SENSOR_INTERVAL_VAR, DEV_SENSOR_INTERVAL_SECONDS)
    env.setdefault(DAGSTER_UI_URL_VAR, f"http://127.0.0.1:{port}")
    # Started in the background by a non-interactive shell, this process inherits SIGINT as
    # ignored, and so would the children, which then could not be stopped cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    bin_dir = Path(sys.executable).parent
    children: list[subprocess.Popen[bytes]] = []
    api = urlsplit(settings.execution_api_url)
    if api.hostname in ("127.0.0.1", "localhost"):
        children.append(
            subprocess.Popen(
                [
                    str(bin_dir / "graph-runs"),
                    "execution-api",
                    "serve",
                    "--host",
                    api.hostname,
                    "--port",
                    str(api.port or 80),
                ],
                env=env,
            )
        )
    management = f"http://127.0.0.1:{management_port}"
    children.append(
        subprocess.Popen(
            [str(bin_dir / "graph-runs"), "api", "serve", "--port", str(management_port)],
            env=env,
        )
    )
    urls = {
        "dagster_ui": f"http://127.0.0.1:{port}",
        "execution_api": settings.execution_api_url,
        "management_api": management,
        "management_api_key_file": str(key_file),
        "schedules_database": sa.make_url(settings.database_url()).render_as_string(),
        "seeded": seeded,
    }
    if as_json:
        click.echo(json.dumps(urls))
    else:
        for line in seeded:
            click.echo(line)
        click.echo(
            f"graph-runs dev: Dagster UI on {urls['dagster_ui']}, execution API on "
            f"{urls['execution_api']}, schedules database {urls['schedules_database']}"
        )
        click.echo(
            f"graph-runs dev: management API on {management} (docs {management}/docs), "
            f"its key in {key_file}"
        )
    children.append(
        subprocess.Popen(
            [
                str(bin_dir / "dagster"),
                "dev",
                "-w",
                str(REPO_ROOT / "workspace.yaml"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            # Where its dagster.yaml is: from the top of the repo, dagster dev warns that
            # the dagster.yaml there is not the instance's (it is not: DAGSTER_HOME's copy
            # is). The Dagster processes get this process's environment; no .env is read.
            cwd=dagster_home,
        )
    )
    try:
        return children[-1].wait()
    except KeyboardInterrupt:
        return 130
    finally:
        for child in children:
            if child.poll() is None:
                # dagster dev shuts its webserver, daemon and code servers down on SIGINT;
                # on SIGTERM it exits and leaves them running.
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()


@click.command("dev")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=3000,
    show_default=True,
    help="The Dagster UI's port (make dev PORT=...).",
)
@click.option(
    "--api-port",
    type=click.IntRange(1, 65535),
    help=(
        "Serve the local execution API on this port of 127.0.0.1 instead of "
        "GRAPH_RUNS_EXECUTION_API_URL's (make dev API_PORT=...)."
    ),
)
@click.option(
    "--management-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_API_PORT,
    show_default=True,
    help="The management API's port (make dev MANAGEMENT_PORT=...).",
)
@json_option
def dev(port: int, api_port: int | None, management_port: int, as_json: bool) -> None:
    """Migrate, seed a demo, and run the execution API, the Dagster webserver and daemon."""
    raise click.exceptions.Exit(
        run_dev(
            load_settings(),
            port=port,
            as_json=as_json,
            api_port=api_port,
            management_port=management_port,
        )
    )
