"""The run ledger: one row per slot or trigger, and what each run cost.

Every graph run, scheduled or ad hoc, goes through the same three steps here: start (find or
create its row), build the request body from the row, and record the outcome. The row is the
single source of the request body, so every retry and every re-execution sends the same
idempotency key and the same body.
"""

import datetime as dt
from dataclasses import asdict, dataclass, replace
from typing import Any

import sqlalchemy as sa

from graph_runs.approvals.decisions import is_approved
from graph_runs.core.cron import format_utc
from graph_runs.core.errors import Conflict, NotFound
from graph_runs.core.ids import new_id
from graph_runs.core.money import micros_to_usd, usd_to_micros
from graph_runs.core.statuses import (
    AWAITING_APPROVAL,
    CANCELLED,
    CANCELLING,
    FAILED,
    QUEUED,
    SETTLED,
    SUCCEEDED,
)
from graph_runs.execution_api.client import Outcome
from graph_runs.scheduling.refire import uncount_failure
from graph_runs.scheduling.revocation import pause_schedules_of_grant
from graph_runs.scheduling.schedules import FAILURE_PAUSER, pause_schedule
from graph_runs.store import slot_status
from graph_runs.store.db import insert_ignoring_conflicts
from graph_runs.store.tables import charge_receipts, run_ledger, schedules

# A run failing with these codes means the schedule's grant can never succeed again.
GRANT_GONE = frozenset({"grant_expired", "grant_revoked", "grant_missing"})

TAG_PREFIX = "graph_runs/"
LEDGER_ID_TAG = f"{TAG_PREFIX}ledger_id"
# The run queue's per-account limit (tagConcurrencyLimits) counts runs by this tag, so it
# must be right when the run is submitted, not only once its op has run.
BILLING_ACCOUNT_TAG = f"{TAG_PREFIX}billing_account"


def api_key(caller_key: str) -> str:
    """The idempotency key of a run requested through Dagster's API with the caller's key."""
    return f"api:{caller_key}"


def run_tags(row: Any) -> dict[str, str]:
    """The Dagster run tags that make a run findable by schedule, owner, graph and slot."""
    tags = {
        LEDGER_ID_TAG: row.id,
        f"{TAG_PREFIX}graph_id": row.graph_id,
        f"{TAG_PREFIX}owner": row.owner,
        f"{TAG_PREFIX}trigger_kind": row.trigger_kind,
        f"{TAG_PREFIX}idempotency_key": row.idempotency_key,
    }
    if row.schedule_id:
        tags[f"{TAG_PREFIX}schedule_id"] = row.schedule_id
    if row.billing_account:
        tags[BILLING_ACCOUNT_TAG] = row.billing_account
    if row.scheduled_for:
        tags[f"{TAG_PREFIX}scheduled_for"] = format_utc(row.scheduled_for)
    return tags


@dataclass(frozen=True)
class Ticket:
    """What the ops pass along: one ledger row's identity and its request."""

    ledger_id: str
    idempotency_key: str
    graph_id: str
    owner: str
    grant_id: str
    schedule_id: str | None
    scheduled_for: str | None
    billing_account: str | None
    timeout_seconds: int | None
    max_cost_micros: int | None
    already_succeeded: bool

    @property
    def label(self) -> str:
        """How log lines name this run, so that an incident can be traced from any of them."""
        slot = self.scheduled_for or "ad hoc"
        return (
            f"[schedule={self.schedule_id or '-'} owner={self.owner} slot={slot} "
            f"graph={self.graph_id} ledger={self.ledger_id}]"
        )

    def as_dict(self) -> dict[str, Any]:
        """A plain dict, to pass between ops."""
        return asdict(self)

    @classmethod
    def from_row(cls, row: Any) -> "Ticket":
        """Build from a ``graph_runs`` row."""
        return cls(
            ledger_id=row.id,
            idempotency_key=row.idempotency_key,
            graph_id=row.graph_id,
            owner=row.owner,
            grant_id=row.grant_id,
            schedule_id=row.schedule_id,
            scheduled_for=None if row.scheduled_for is None else format_utc(row.scheduled_for),
            billing_account=row.billing_account,
            timeout_seconds=row.timeout_seconds,
            max_cost_micros=row.max_cost_micros,
            already_succeeded=row.status == SUCCEEDED,
        )


def request_body(row: Any, connection_ids: list[str]) -> dict[str, Any]:
    """The contract's request body, a pure function of the ledger row and the grant."""
    max_cost = micros_to_usd(row.max_cost_micros)
    return {
        "grant_id": row.grant_id,
        "input": row.input,
        "trigger": {
            "kind": row.trigger_kind,
            "source": row.trigger_source,
            "ref": row.trigger_ref,
            "requested_by": row.requested_by,
        },
        "schedule_id": row.schedule_id,
        "scheduled_for": None if row.scheduled_for is None else format_utc(row.scheduled_for),
        "limits": {
            "max_cost_usd": None if max_cost is None else float(max_cost),
            "timeout_seconds": row.timeout_seconds,
        },
        "connection_ids": sorted(connection_ids),
    }


def get_run(conn: sa.Connection, ledger_id: str, *, lock: bool = False) -> Any:
    """The ledger row, or raise NotFound; ``lock`` holds it until the transaction ends.

    Locking takes the row's schedule first, then the row: the order of every writer that
    touches both (the claim and pause lock the schedule, then its ledger rows). A worker
    that took the ledger row first could wait for the schedule while a pause holding the
    schedule waits for the row: Postgres would abort one of them, and lose an outcome.
    """
    query = sa.select(run_ledger).where(run_ledger.c.id == ledger_id)
    if lock and conn.dialect.name == "postgresql":
        schedule_id = conn.execute(
            sa.select(run_ledger.c.schedule_id).where(run_ledger.c.id == ledger_id)
        ).scalar_one_or_none()
        if schedule_id is not None:
            conn.execute(
                sa.select(schedules.c.id).where(schedules.c.id == schedule_id).with_for_update()
            )
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    if row is None:
        raise NotFound(f"graph run {ledger_id} not found in the ledger")
    return row


def start_run(conn: sa.Connection, ledger_id: str, *, dagster_run_id: str, now: dt.datetime) -> Any:
    """Mark a ledger row as running in ``dagster_run_id``; returns the row as it now is.

    A row that already succeeded is returned unchanged: a re-executed run then gets the first
    outcome back from the API (same key, same body) and records nothing new. So is a failed
    slot: it fires again only when a person refires it (``graph_runs.scheduling.refire``),
    since the run that fired it may have fired other owners' slots. A failed trigger-now
    or ad-hoc run, whose Dagster run is its own, starts again when that run is re-executed.
    A row that was cancelled, or is being cancelled (its schedule paused or deleted, or
    overlap cancel_other), ends ``cancelled`` here and is returned so: the op then does
    nothing. The row is locked, so a pause that commits meanwhile is seen, not overwritten.
    """
    row = get_run(conn, ledger_id, lock=True)
    if row.status in SETTLED or (row.status == FAILED and row.scheduled_for is not None):
        return row
    if row.status == AWAITING_APPROVAL and not is_approved(conn, ledger_id):
        # Only the approvals sensor launches a gated slot, and only once it is approved; a
        # run launched any other way (by hand, with the ledger tag) must not slip past.
        raise Conflict(f"graph run {ledger_id} is waiting for approval; it was not approved")
    if row.status == FAILED and row.schedule_id is not None:
        uncount_failure(conn, row.schedule_id, now)
    slot_status.start(conn, row, dagster_run_id=dagster_run_id, now=now)
    return get_run(conn, ledger_id)


@dataclass(frozen=True)
class AdhocRequest:
    """A run asked for outside any schedule (Dagster's GraphQL API, the launchpad)."""

    idempotency_key: str
    graph_id: str
    grant_id: str
    input: dict[str, Any]
    requested_by: str | None = None
    source: str = "dagster"
    max_cost_usd: str | None = None
    timeout_seconds: int | None = None


def start_adhoc_run(
    conn: sa.Connection,
    request: AdhocRequest,
    *,
    owner: str,
    billing_account: str | None,
    dagster_run_id: str,
    now: dt.datetime,
) -> Any:
    """Find or create the ledger row for an ad-hoc request, then start it.

    The same key with the same request is the same run: it gets the one row (and the API
    executes it once). The same key with a different request raises Conflict.
    """
    key = api_key(request.idempotency_key)
    max_cost = None if request.max_cost_usd is None else usd_to_micros(request.max_cost_usd)
    slot_status.insert_new(
        conn,
        [
            {
                "id": new_id("run"),
                "idempotency_key": key,
                "schedule_id": None,
                "scheduled_for": None,
                "graph_id": request.graph_id,
                "owner": owner,
                "grant_id": request.grant_id,
                "billing_account": billing_account,
                "input": request.input,
                "max_cost_micros": max_cost,
                "timeout_seconds": request.timeout_seconds,
                "trigger_kind": "api",
                "trigger_source": request.source,
                "trigger_ref": request.idempotency_key,
                "requested_by": request.requested_by,
                "status": QUEUED,
                "dagster_run_id": dagster_run_id,
                "created_at": now,
            }
        ],
    )
    row = conn.execute(sa.select(run_ledger).where(run_ledger.c.idempotency_key == key)).one()
    mismatched = [
        name
        for name, stored, given in (
            ("graph_id", row.graph_id, request.graph_id),
            ("grant_id", row.grant_id, request.grant_id),
            ("input", row.input, request.input),
            ("max_cost_usd", row.max_cost_micros, max_cost),
            ("timeout_seconds", row.timeout_seconds, request.timeout_seconds),
        )
        if stored != given
    ]
    if mismatched:
        raise Conflict(
            f"idempotency key {request.idempotency_key!r} was first used for another request "
            f"(different {', '.join(mismatched)}); ledger row {row.id}"
        )
    return start_run(conn, row.id, dagster_run_id=dagster_run_id, now=now)


def record_outcome(
    conn: sa.Connection,
    ledger_id: str,
    outcome: Outcome,
    *,
    dagster_run_id: str,
    now: dt.datetime,
) -> dict[str, Any]:
    """Record a run's outcome, its schedule's counters and its charge receipt.

    Safe to repeat: a succeeded row never changes, counters move only on a real transition
    (a failed run that succeeds on re-execution moves one count from failed to succeeded),
    and the receipt is unique per graph run and per API run.

    A reported cost above the run's ``max_cost_micros`` flags the row ``over_budget``: the API
    was asked to stop there, so going past it is worth a look (and is counted by describe and
    the billing report).

    Returns what the op reports as metadata, including whether this call changed anything.
    """
    row = get_run(conn, ledger_id, lock=True)
    if row.status == CANCELLING and outcome.status != CANCELLED:
        # Asked to stop while its call was at the API (a pause with --terminate, overlap
        # cancel_other, a cancelled dispatch run): the slot ends cancelled, as asked, but
        # with its API run, output and usage, and the receipt below, because the money was
        # spent.
        outcome = replace(
            outcome,
            status=CANCELLED,
            error_code=row.error_code or "cancelled",
            error_message=row.error_message or "cancelled while its API run was going",
        )
    # A cancelled row stays cancelled even if the API finished the run meanwhile; its
    # receipt is still written below, because the money was spent.
    changed = row.status not in SETTLED and not (
        row.status == outcome.status and row.api_run_id == outcome.api_run_id
    )
    usage = outcome.usage
    cost_micros = None if usage is None else usd_to_micros(usage.cost_usd)
    over_budget = (
        cost_micros is not None
        and row.max_cost_micros is not None
        and cost_micros > row.max_cost_micros
    )
    if changed:
        # False only if another writer moved the row since it was read (SQLite takes no row
        # lock): the counters are then that writer's to move.
        changed = slot_status.settle_outcome(
            conn,
            row,
            outcome.status,
            dagster_run_id=dagster_run_id,
            api_run_id=outcome.api_run_id,
            output=outcome.output,
            error_code=outcome.error_code,
            error_message=outcome.error_message,
            finished_at=now,
            over_budget=over_budget,
        )
    if changed and row.schedule_id is not None:
        _move_counters(conn, row, outcome, now)
    receipt_written = False
    if usage is not None and outcome.api_run_id is not None and row.billing_account is not None:
        receipt_written = (
            insert_ignoring_conflicts(
                conn,
                charge_receipts,
                [
                    {
                        "id": new_id("rcpt"),
                        "graph_run_id": row.id,
                        "api_run_id": outcome.api_run_id,
                        "billing_account": row.billing_account,
                        "grant_id": row.grant_id,
                        "schedule_id": row.schedule_id,
                        "dagster_run_id": dagster_run_id,
                        "graph_id": row.graph_id,
                        "model": usage.model,
                        "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens,
                        "total_tokens": usage.total_tokens,
                        "cost_micros": cost_micros,
                        "created_at": now,
                    }
                ],
            )
            == 1
        )
    final = get_run(conn, ledger_id)
    return {
        "ledger_id": final.id,
        "status": final.status,
        "api_run_id": final.api_run_id,
        "changed": changed,
        "receipt_written": receipt_written,
        "total_tokens": None if usage is None else usage.total_tokens,
        "cost_usd": None if usage is None else str(usage.cost_usd),
        "over_budget": bool(final.over_budget),
        "max_cost_usd": (
            None if final.max_cost_micros is None else str(micros_to_usd(final.max_cost_micros))
        ),
    }


def _move_counters(conn: sa.Connection, row: Any, outcome: Outcome, now: dt.datetime) -> None:
    succeeded = failed = 0
    if outcome.status == SUCCEEDED:
        succeeded = 1
        failed = -1 if row.status == FAILED else 0
    elif outcome.status == FAILED and row.status != FAILED:
        failed = 1
    if not (succeeded or failed):
        return
    error = (
        None if outcome.status == SUCCEEDED else f"{outcome.error_code}: {outcome.error_message}"
    )
    conn.execute(
        schedules.update()
        .where(schedules.c.id == row.schedule_id)
        .values(
            runs_succeeded=schedules.c.runs_succeeded + succeeded,
            runs_failed=schedules.c.runs_failed + failed,
            consecutive_failures=(
                0 if outcome.status == SUCCEEDED else schedules.c.consecutive_failures + failed
            ),
            last_error=error,
            updated_at=now,
        )
    )
    if failed == 1 and outcome.error_code in GRANT_GONE:
        # Every later slot would fail the same way: pause now, naming the grant and why.
        pause_schedules_of_grant(
            conn,
            row.grant_id,
            now=now,
            note=f"grant {row.grant_id}: {outcome.error_code}: {outcome.error_message}"[:2000],
        )
    elif failed == 1:
        _pause_after_failures(conn, row.schedule_id, error or "", now)


def _pause_after_failures(
    conn: sa.Connection, schedule_id: str, error: str, now: dt.datetime
) -> None:
    """Pause a schedule whose last N runs all failed, so it stops failing (and spending)."""
    schedule = conn.execute(
        sa.select(
            schedules.c.enabled,
            schedules.c.status,
            schedules.c.consecutive_failures,
            schedules.c.pause_after_failures,
        ).where(schedules.c.id == schedule_id)
    ).one_or_none()
    if schedule is None or not schedule.enabled or schedule.status == "deleted":
        return
    limit = schedule.pause_after_failures
    if not limit or schedule.consecutive_failures < limit:
        return
    note = (
        f"paused after {schedule.consecutive_failures} consecutive failed runs; last error: {error}"
    )[:2000]
    pause_schedule(conn, schedule_id, now=now, note=note, by=FAILURE_PAUSER)
