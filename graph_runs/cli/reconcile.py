"""``graph-runs reconcile``: drift between the schedules database and Dagster, and its repair.

Without ``--fix`` it only reports, and exits 1 when there is drift, so that it serves as a
check. With ``--fix`` it repairs what is safe (one audit entry per change) and exits 1 when
something is left for a person. Dagster's side (partitions, runs) is compared when
``DAGSTER_HOME`` names an instance, and the report names it; without it, the database's
side alone, which the report says too. ``--fix`` without an instance is refused (a repair
meant for runs would silently not happen) unless ``--database-only`` says that is meant.
"""

from typing import Any

import click

from graph_runs.cli.support import emit, json_option, now, settings
from graph_runs.jobs.drift import configured_instance, reconcile
from graph_runs.store.db import check_schema, make_engine


def _human(data: dict[str, Any]) -> str:
    lines = [f"drift at {data['at']} ({data['compared']}): {len(data['findings'])} finding(s)"]
    for f in data["findings"]:
        more = f" (+{f['count'] - len(f['ids'])} more)" if f["count"] > len(f["ids"]) else ""
        lines.append(f"- {f['kind']}: {f['count']} - {f['detail']}")
        lines.append(f"    ids: {' '.join(f['ids'])}{more}")
        done = f", repaired {len(f['repaired'])}" if data["fixed"] else ""
        lines.append(f"    repair: {f['repair']}{done}")
    return "\n".join(lines)


@click.command("reconcile")
@click.option("--fix", is_flag=True, help="Repair what is safe; one audit entry per change.")
@click.option(
    "--database-only",
    is_flag=True,
    help="With --fix and no DAGSTER_HOME: repair the database's side alone, knowingly.",
)
@json_option
def reconcile_command(fix: bool, database_only: bool, as_json: bool) -> None:
    """Compare what should be with what is; exit 1 on drift (or, with --fix, drift left)."""
    config = settings()
    if fix and not config.dagster_home and not database_only:
        raise click.UsageError(
            "--fix needs the Dagster instance to compare runs and partitions with: set "
            "DAGSTER_HOME to its folder (`graph-runs dev` uses .graph_runs/dagster), or add "
            "--database-only to repair the database's side alone"
        )
    engine = make_engine(config.database_url())
    instance = configured_instance(config.dagster_home)
    at = now()
    try:
        check_schema(engine)
        findings = reconcile(engine, instance, now=at, limits=config.schedule_limits, fix=fix)
    finally:
        engine.dispose()
        if instance is not None:
            instance.dispose()
    data = {
        "at": at.isoformat().replace("+00:00", "Z"),
        "compared": (
            f"database and the Dagster instance of DAGSTER_HOME={config.dagster_home}"
            if instance is not None
            else "database only (DAGSTER_HOME is not set)"
        ),
        "dagster_home": config.dagster_home if instance is not None else None,
        "fixed": fix,
        "findings": [f.as_dict() for f in findings],
    }
    emit(as_json, data, _human)
    left = [f for f in findings if len(f.repaired) < f.count] if fix else findings
    if left:
        click.get_current_context().exit(1)
