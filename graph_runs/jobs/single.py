"""One graph run per Dagster run: check the grant, call the execution API, record the outcome.

``graph_run_adhoc_job`` is launched through Dagster's GraphQL API or the launchpad with a
``GraphRunRequest`` config that carries the caller's idempotency key: ad-hoc runs stay one
Dagster run per request. Scheduled slots go through ``graph_runs.jobs.dispatch`` instead,
which shares ``start_single`` for the runs that carry one ledger row (an approved slot, a
partition run launched from the UI).
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from graph_runs.access.grants import GrantDenied
from graph_runs.core.errors import Conflict, InvalidInput, NotFound
from graph_runs.core.schedule_spec import ScheduleLimits, validate_run_request
from graph_runs.core.statuses import FAILED
from graph_runs.dispatch import ledger
from graph_runs.dispatch.api_runs import DEFAULT_RUN_TIMEOUT, GIVE_UP_MARGIN
from graph_runs.dispatch.started import check_started
from graph_runs.execution_api.client import ExecutionApiError, Outcome
from graph_runs.resources import (
    ClockResource,
    DatabaseResource,
    ExecutionApiResource,
    GrantsResource,
    ScheduleLimitsResource,
)
from graph_runs.scheduling.triggers import request_partition_run


class GraphRunRequest(dg.Config):
    """An ad-hoc run's request. Scheduled runs leave it empty: their run tags name the slot."""

    idempotency_key: str = ""
    graph_id: str = ""
    grant_id: str = ""
    input: dict[str, Any] = {}
    requested_by: str | None = None
    max_cost_usd: str | None = None
    timeout_seconds: int | None = None


def _refuse_unless_billed(
    context: dg.OpExecutionContext, account: str | None, *, required: bool, whose: str
) -> None:
    """Refuse a run whose billing-account tag is not the account that pays for it.

    The run queue counts runs per account by this tag before any op runs, so a run that
    claims another account's tag (or, where the submitter must set it, none) would slip
    past its own account's limit and use another's.
    """
    claimed = context.run.tags.get(ledger.BILLING_ACCOUNT_TAG)
    if claimed == account or (claimed is None and not required) or account is None:
        return
    raise dg.Failure(
        description=(
            f"the run's tag {ledger.BILLING_ACCOUNT_TAG} is "
            f"{'missing' if claimed is None else repr(claimed)}, but {whose} bills "
            f"{account!r}: launch it with the tag {ledger.BILLING_ACCOUNT_TAG}={account}, "
            "which the run queue's per-account limit counts (docs/immediate-runs.md)"
        ),
        metadata={"error_code": "billing_account_tag_mismatch"},
    )


# Run monitoring's per-run bound (Dagster's tag), which overrides max_runtime_seconds.
MAX_RUNTIME_TAG = "dagster/max_runtime"


def _bound_runtime(context: dg.OpExecutionContext, row: Any) -> None:
    """Let run monitoring kill this run only after its slot's timeout could have passed.

    A run of one slot polls its API run for up to the slot's timeout (up to 7 days); the
    instance's ``max_runtime_seconds`` (2 h in dagster.postgres.yaml) would kill it first
    and leave a paid run without its receipt. Dispatch runs need no such tag: they hand
    long API runs to the sensor after GRAPH_RUNS_DISPATCH_HAND_OFF_SECONDS.
    """
    timeout = row.timeout_seconds or DEFAULT_RUN_TIMEOUT.total_seconds()
    bound = int(timeout + 2 * GIVE_UP_MARGIN.total_seconds())
    context.instance.add_run_tags(context.run_id, {MAX_RUNTIME_TAG: str(bound)})


def start_single(
    context: dg.OpExecutionContext,
    config: GraphRunRequest,
    database: DatabaseResource,
    grants: GrantsResource,
    clock: ClockResource,
    limits: ScheduleLimits,
) -> Any:
    """Find the run's ledger row (creating it for an ad-hoc request) and mark it running."""
    row = _start_single(context, config, database, grants, clock, limits)
    _bound_runtime(context, row)
    return row


def _start_single(
    context: dg.OpExecutionContext,
    config: GraphRunRequest,
    database: DatabaseResource,
    grants: GrantsResource,
    clock: ClockResource,
    limits: ScheduleLimits,
) -> Any:
    now = clock.now()
    ledger_id = context.run.tags.get(ledger.LEDGER_ID_TAG)
    if ledger_id:
        with database.transaction() as conn:
            current = ledger.get_run(conn, ledger_id)
            _refuse_unless_billed(
                context, current.billing_account, required=False, whose=f"slot {ledger_id}"
            )
            return ledger.start_run(conn, ledger_id, dagster_run_id=context.run_id, now=now)
    if context.has_partition_key and not config.idempotency_key:
        # Launched from the Dagster UI for a schedule (a partition backfill, say): a
        # trigger-now of that schedule, keyed by the root run so re-execution reuses it.
        with database.transaction() as conn:
            ledger_id = request_partition_run(
                conn,
                context.partition_key,
                dagster_run_id=context.run_id,
                root_run_id=context.run.root_run_id or context.run_id,
                requested_by=context.run.tags.get("dagster/user"),
                now=now,
            )
            # Raised in the transaction: a refused run leaves no row behind. The UI's
            # launches carry the tag from the schedule's grant (jobs.partition_tags); one
            # without it went past the queue's per-account limit.
            _refuse_unless_billed(
                context,
                ledger.get_run(conn, ledger_id).billing_account,
                required=True,
                whose=f"schedule {context.partition_key}",
            )
            row = ledger.start_run(conn, ledger_id, dagster_run_id=context.run_id, now=now)
        context.instance.add_run_tags(context.run_id, ledger.run_tags(row))
        return row
    missing = [
        name for name in ("idempotency_key", "graph_id", "grant_id") if not getattr(config, name)
    ]
    if missing:
        raise dg.Failure(
            description=(
                "an ad-hoc graph run needs op config check_grant.config with "
                f"{', '.join(missing)} (see docs/immediate-runs.md)"
            )
        )
    try:
        # The same checks as a schedule's: this id goes into the API's URL, this input to it.
        validate_run_request(
            {
                "idempotency_key": config.idempotency_key,
                "graph_id": config.graph_id,
                "grant_id": config.grant_id,
                "input": config.input,
                "max_cost_usd": config.max_cost_usd,
                "timeout_seconds": config.timeout_seconds,
            },
            limits,
        )
    except InvalidInput as exc:
        raise dg.Failure(description=f"the ad-hoc run's request is refused: {exc}") from None
    grant = grants.get(config.grant_id)
    _refuse_unless_billed(
        context,
        grant.billing_account if grant else None,
        required=True,
        whose=f"grant {config.grant_id}",
    )
    request = ledger.AdhocRequest(
        idempotency_key=config.idempotency_key,
        graph_id=config.graph_id,
        grant_id=config.grant_id,
        input=config.input,
        requested_by=config.requested_by,
        source="dagster",
        max_cost_usd=config.max_cost_usd,
        timeout_seconds=config.timeout_seconds,
    )
    with database.transaction() as conn:
        row = ledger.start_adhoc_run(
            conn,
            request,
            owner=grant.owner if grant else "unknown",
            billing_account=grant.billing_account if grant else None,
            dagster_run_id=context.run_id,
            now=now,
        )
    context.instance.add_run_tags(context.run_id, ledger.run_tags(row))
    return row


def checked_body(
    context: dg.OpExecutionContext,
    database: DatabaseResource,
    clock: ClockResource,
    row: Any,
) -> dict[str, Any] | None:
    """The request body of a row started in this run, if it is to call the API at all.

    None for a slot cancelled before its run started; a grant that does not allow the run
    is recorded as the row's failed outcome (``dispatch.started``), and fails the run
    naming its code.
    """
    ticket = ledger.Ticket.from_row(row)
    with database.transaction() as conn:
        checked = check_started(conn, row, dagster_run_id=context.run_id, now=clock.now())
    if checked is None:
        again = (
            "; `graph-runs schedules refire` fires a failed slot again"
            if row.status == FAILED
            else ""
        )
        context.log.warning(
            f"{ticket.label} not calling the execution API: the slot is {row.status} "
            f"({row.error_code}: {row.error_message}){again}"
        )
        return None
    if isinstance(checked, GrantDenied):
        context.log.error(f"{ticket.label} grant check failed: {checked.code}: {checked.message}")
        raise dg.Failure(
            description=f"{ticket.label} {checked.code}: {checked.message}",
            metadata={"error_code": checked.code, "ledger_id": row.id},
        )
    return checked


@dg.op(
    description="Find the run's ledger row and check its grant before any API call.",
    out=dg.Out(dict, is_required=False),
)
def check_grant(
    context: dg.OpExecutionContext,
    config: GraphRunRequest,
    database: DatabaseResource,
    grants: GrantsResource,
    clock: ClockResource,
    schedule_limits: ScheduleLimitsResource,
) -> Iterator[dg.Output[dict[str, Any]]]:
    """Fail fast, recording why, when the grant is missing, expired, revoked or out of scope.

    A slot cancelled before its run started (its schedule paused or deleted, or superseded
    under overlap cancel_other) yields nothing: the API is not called, the later steps are
    skipped, and the run ends without charging anyone.
    """
    try:
        row = start_single(context, config, database, grants, clock, schedule_limits.limits())
    except (Conflict, NotFound, InvalidInput) as exc:
        raise dg.Failure(description=str(exc)) from None
    ticket = ledger.Ticket.from_row(row)
    body = checked_body(context, database, clock, row)
    if body is None:
        return
    context.log.info(
        f"{ticket.label} grant {row.grant_id} allows the run; calling the execution API"
    )
    yield dg.Output({"ticket": ticket.as_dict(), "body": body})


@dg.op(
    description="Submit the run to the execution API and wait for its outcome, with retries.",
    out=dg.Out(dict),
)
def call_execution_api(
    context: dg.OpExecutionContext, checked: dict[str, Any], execution_api: ExecutionApiResource
) -> dict[str, Any]:
    """Call the API with the slot's idempotency key; a refusal becomes a failed outcome."""
    ticket = ledger.Ticket(**checked["ticket"])
    try:
        outcome = execution_api.client().run(
            graph_id=ticket.graph_id,
            body=checked["body"],
            idempotency_key=ticket.idempotency_key,
            dagster_run_id=context.run_id,
            timeout_seconds=ticket.timeout_seconds,
        )
    except ExecutionApiError as exc:
        context.log.error(
            f"{ticket.label} execution API refused or unreachable after {exc.attempts} "
            f"attempt(s): {exc.code}: {exc.message}"
        )
        outcome = exc.as_outcome()
    else:
        context.log.info(
            f"{ticket.label} execution API run {outcome.api_run_id} ended {outcome.status} "
            f"after {outcome.attempts} attempt(s)"
        )
    return outcome.as_dict()


@dg.op(description="Write the outcome, the schedule's counters and the charge receipt.")
def record_outcome(
    context: dg.OpExecutionContext,
    checked: dict[str, Any],
    outcome: dict[str, Any],
    database: DatabaseResource,
    clock: ClockResource,
) -> dg.Output[dict[str, Any]]:
    """Record once; a failed graph run fails the Dagster run after it is recorded."""
    ticket = ledger.Ticket(**checked["ticket"])
    result = Outcome.from_dict(outcome)
    with database.transaction() as conn:
        recorded = ledger.record_outcome(
            conn, ticket.ledger_id, result, dagster_run_id=context.run_id, now=clock.now()
        )
    metadata: dict[str, Any] = {
        "api_run_id": recorded["api_run_id"] or "",
        "status": recorded["status"],
        "tokens": recorded["total_tokens"] or 0,
        "cost_usd": recorded["cost_usd"] or "0",
        "ledger_id": ticket.ledger_id,
        "idempotency_key": ticket.idempotency_key,
        "receipt_written": recorded["receipt_written"],
        "over_budget": recorded["over_budget"],
    }
    if recorded["over_budget"]:
        context.log.warning(
            f"{ticket.label} over budget: cost {metadata['cost_usd']} USD is above "
            f"max_cost_usd {recorded['max_cost_usd']}"
        )
    context.log.info(
        f"{ticket.label} recorded {recorded['status']}; cost {metadata['cost_usd']} USD, "
        f"{metadata['tokens']} tokens, receipt "
        f"{'written' if recorded['receipt_written'] else 'already present or none'}"
    )
    if recorded["status"] != ledger.SUCCEEDED:
        raise dg.Failure(
            description=(
                f"{ticket.label} graph run failed: {result.error_code}: {result.error_message}"
            ),
            metadata=metadata,
        )
    return dg.Output(recorded, metadata=metadata)


@dg.graph
def graph_run() -> None:
    """One graph run: grant check, API call, outcome."""
    checked = check_grant()
    record_outcome(checked, call_execution_api(checked))


graph_run_adhoc_job = graph_run.to_job(
    name="graph_run_adhoc_job",
    description="An immediate graph run with the caller's idempotency key (GraphQL, launchpad).",
    executor_def=dg.in_process_executor,
)
