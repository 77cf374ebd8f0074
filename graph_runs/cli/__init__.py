"""The ``graph-runs`` command line: one module per command group, assembled here.

Every command takes ``--json`` for scripts. Bad input prints one line, ``error: ...``, and
exits with status 2; nothing is written, because each command runs in one transaction.
"""

import sys

import click

from graph_runs.cli.api import api, api_keys
from graph_runs.cli.approvals import approvals, webhooks
from graph_runs.cli.billing import billing, budgets
from graph_runs.cli.db import db
from graph_runs.cli.dev import dev
from graph_runs.cli.grants import grants
from graph_runs.cli.reconcile import reconcile_command
from graph_runs.cli.schedules import schedules
from graph_runs.cli.servers import execution_api
from graph_runs.cli.status import status
from graph_runs.core.errors import GraphRunsError
from graph_runs.settings import SettingsError
from graph_runs.store.db import SchemaError


@click.group()
def cli() -> None:
    """graph-runs: users' scheduled AI graph runs, fired exactly once per slot by Dagster."""


for group in (
    db,
    grants,
    budgets,
    billing,
    approvals,
    webhooks,
    schedules,
    status,
    reconcile_command,
    execution_api,
    api,
    api_keys,
    dev,
):
    cli.add_command(group)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every user error is one line on stderr and exit status 2."""
    try:
        # Not standalone, click hands back the code of a command's ctx.exit() (a probe's 1).
        code = cli.main(args=argv, prog_name="graph-runs", standalone_mode=False)
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
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
