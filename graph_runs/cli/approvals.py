"""``graph-runs approvals`` and ``graph-runs webhooks``: deciding slots that wait for a human."""

from typing import Any

import click

from graph_runs.approvals import decisions as approvals_api
from graph_runs.cli.support import emit, json_option, now, settings, transaction


def _approval_line(a: dict[str, Any]) -> str:
    decided = f"  {a['status']} by {a['decided_by']}" if a["decided_by"] else f"  {a['status']}"
    return (
        f"{a['id']}  schedule={a['schedule_id']}  slot={a['scheduled_for']}  "
        f"graph={a['graph_id']}  owner={a['owner']}  billing={a['billing_account']}  "
        f"expires={a['expires_at']} (then {a['on_timeout']}){decided}"
    )


@click.group()
def approvals() -> None:
    """Slots of schedules created with --requires-approval, waiting for a decision."""


@approvals.command("list")
@click.option("--status", type=click.Choice(approvals_api.STATUSES))
@click.option("--schedule", "schedule_id")
@click.option("--owner")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
def approvals_list(
    status: str | None, schedule_id: str | None, owner: str | None, limit: int, as_json: bool
) -> None:
    """Approvals, oldest first, with what each slot would run and who it bills."""
    with transaction() as conn:
        rows = approvals_api.list_approvals(
            conn, status=status, schedule_id=schedule_id, owner=owner, limit=limit
        )
    emit(as_json, rows, lambda d: "\n".join(_approval_line(a) for a in d) or "no approvals")


def _decide(decision: approvals_api.Decision, approval_id: str, by: str, note: str | None) -> Any:
    with transaction() as conn:
        return approvals_api.decide(
            conn, approval_id, decision, by=by, note=note, now=now(), source="cli"
        )


@approvals.command("approve")
@click.argument("approval_id")
@click.option("--by", required=True, help="Who approves (recorded, audited, tagged on the run).")
@click.option("--note", help="Why (recorded and audited).")
@json_option
def approvals_approve(approval_id: str, by: str, note: str | None, as_json: bool) -> None:
    """Approve a pending slot; the approvals sensor launches its run on its next tick."""
    emit(as_json, _decide("approve", approval_id, by, note), _approval_line)


@approvals.command("reject")
@click.argument("approval_id")
@click.option("--by", required=True, help="Who rejects (recorded, audited).")
@click.option("--note", help="Why (recorded and audited).")
@json_option
def approvals_reject(approval_id: str, by: str, note: str | None, as_json: bool) -> None:
    """Reject a pending slot: it is recorded rejected and never calls the execution API."""
    emit(as_json, _decide("reject", approval_id, by, note), _approval_line)


@click.group()
def webhooks() -> None:
    """The webhook that review tools post approval decisions to."""


@webhooks.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8766, show_default=True)
@json_option
def webhooks_serve(host: str, port: int, as_json: bool) -> None:
    """Serve POST /webhooks/approvals, signed with GRAPH_RUNS_WEBHOOK_SECRET, until stopped."""
    import uvicorn

    from graph_runs.http.webhooks import create_app
    from graph_runs.settings import webhook_secret
    from graph_runs.store.db import check_schema, make_engine

    config = settings()
    secret = webhook_secret()
    engine = make_engine(config.database_url())
    check_schema(engine)
    app = create_app(engine, secret, clock=now)
    emit(
        as_json,
        {"url": f"http://{host}:{port}/webhooks/approvals"},
        lambda d: f"approvals webhook listening on {d['url']}",
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        engine.dispose()
