"""Drift: what should be (the schedules database) against what is (Dagster, the ledger).

``find_drift`` lists each disagreement as a ``Finding``: its kind, the ids, and the repair;
``graph_runs.operations.drift_repair`` makes the repairs that are safe, each with one ``audit_log``
entry, and leaves the rest for a person, saying so. Dagster's side (partitions, runs)
arrives as plain ``DagsterFacts``, so that neither module imports Dagster;
``graph_runs.jobs.drift`` reads them from an instance, for the command line and the hourly
job.

Kinds, and what ``--fix`` does:

- ``dagster_instance_unknown``: the Dagster instance knows none of the ledger's most
  recent runs (a ``DAGSTER_HOME`` without its ``dagster.yaml`` is an empty instance, say).
  Every repair that trusts Dagster's side is refused, and this is left for a person.
- ``partition_missing`` / ``partition_orphaned``: a live schedule without its partition, a
  partition whose schedule is deleted. Added or deleted (by the caller, which holds Dagster).
- ``partition_unknown``: a partition of a schedule the database has never had. Left for a
  person: a stale copy of the schedules database (a restored backup) knows none of the
  schedules created since, and deleting their partitions would hide them in the UI.
- ``next_run_missing``: an active schedule without ``next_run_at`` (another application's
  row, say). Set to the first slot after its cursor, or after its creation when it has
  none: the slot the sensor would plan, so that no slot is dropped.
- ``next_run_behind``: an active schedule whose next slot is due for longer than its
  catch-up window: the sensor is not running or not keeping up. Left for the sensor, whose
  catch-up policy decides what fires when it runs again. Claiming here would fire slots
  hours late, whenever a dispatch run next came, and push the on-time slot aside.
- ``run_ended_unrecorded``: a ledger row not final whose own Dagster run ended or is gone.
  Settled as the sensor settles it (failed, or cancelled).
- ``lease_expired``: an open batch whose dispatch run stopped renewing its lease. Left for
  the sensor, which dispatches the next attempt: if it is not doing so, the daemon is down.
- ``run_without_row``: a run of graph-runs' jobs that no ledger row or batch points back to
  (launched by hand with made-up tags, say). Left for a person.
- ``api_run_unsettled``: a slot whose API run was accepted (its id is known) but whose end
  the API never told us: settled by us as lost (``dispatch_lost``, ``dagster_run_lost``,
  ``dagster_run_failed``, ``dagster_run_canceled``) within the last ``UNSETTLED_WINDOW``, or
  still in flight past its timeout and the give-up margin. Left for a person: the API run
  may have succeeded and cost money; look it up at the API by its ``api_run_id``.
- ``succeeded_without_receipt`` / ``receipt_without_success``: money the ledger cannot
  account for. Left for a person: a receipt is never invented or deleted.
- ``schedule_in_error``: a row that does not validate. Left for a person (its reason is in
  ``last_error``; fix the row, then ``schedules resume``).
- ``schedule_on_dead_grant``: an enabled schedule whose grant is revoked or expired. Paused,
  with a note naming the grant, as revoking the grant does.
"""

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from graph_runs.core.errors import InvalidInput
from graph_runs.core.schedule_spec import ScheduleLimits, spec_from_row
from graph_runs.dispatch.api_runs import give_up_at
from graph_runs.dispatch.reconcile import DAGSTER_ENDED, runs_to_reconcile
from graph_runs.store.tables import (
    ACTIVE_SCHEDULE,
    charge_receipts,
    dispatch_batches,
    execution_grants,
    run_ledger,
    schedules,
)

# Most ids one finding lists; the count says how many there are in all.
MAX_IDS = 100
# How long a new schedule may be without its partition: a few sensor ticks.
PARTITION_GRACE = dt.timedelta(minutes=5)
# Rows a check reads at most, so that a huge drift is reported, not read whole.
MAX_ROWS = 10_000
# How far back api_run_unsettled looks (the ledger's creation index bounds the read).
UNSETTLED_WINDOW = dt.timedelta(days=35)
# Error codes of slots we settled without the API's word on their run.
SETTLED_WITHOUT_THE_API = ("dispatch_lost", "dagster_run_lost", "dagster_run_failed",
                           "dagster_run_canceled")  # fmt: skip
# The ledger's newest Dagster runs an instance must know some of to be trusted.
RECENT_LEDGER_RUNS = 20


@dataclass(frozen=True)
class Kind:
    """A kind of drift: what it is, what repairs it, and whether ``--fix`` may."""

    detail: str
    repair: str
    fixable: bool


# Each kind of drift: what it is and what repairs it, in the order the module docstring
# gives them. Only the fixable ones are repaired (graph_runs.operations.drift_repair).
KINDS: dict[str, Kind] = {
    "dagster_instance_unknown": Kind(
        detail=(
            "the Dagster instance knows none of the ledger's most recent runs: is DAGSTER_HOME "
            "the instance the daemon uses?"
        ),
        repair="left for a person: repairs that trust Dagster's side are refused",
        fixable=False,
    ),
    "partition_missing": Kind(
        detail="live schedules without their partition of graph_run_schedules",
        repair="add the partitions",
        fixable=True,
    ),
    "partition_orphaned": Kind(
        detail="partitions of graph_run_schedules whose schedule is deleted",
        repair="delete the partitions",
        fixable=True,
    ),
    "partition_unknown": Kind(
        detail="partitions of graph_run_schedules of schedules this database has never had",
        repair="left for a person: is this the schedules database the sensor reads?",
        fixable=False,
    ),
    "next_run_missing": Kind(
        detail="active schedules without a next run",
        repair="set next_run_at to the first slot the sensor would plan",
        fixable=True,
    ),
    "next_run_behind": Kind(
        detail=(
            "active schedules whose next slot has been due for longer than their catch-up "
            "window: is the daemon running?"
        ),
        repair="left for the sensor, whose catch-up policy decides what fires",
        fixable=False,
    ),
    "run_ended_unrecorded": Kind(
        detail="ledger rows not final whose Dagster run ended or is gone",
        repair="settle them as the sensor does (failed, or cancelled)",
        fixable=True,
    ),
    "lease_expired": Kind(
        detail="open batches whose dispatch run stopped renewing its lease",
        repair=(
            "left for the sensor, which dispatches the next attempt: if it has not, is the "
            "daemon running?"
        ),
        fixable=False,
    ),
    "run_without_row": Kind(
        detail="runs of graph-runs' jobs that no ledger row or batch points back to",
        repair="left for a person: a run launched by hand outside graph-runs?",
        fixable=False,
    ),
    "api_run_unsettled": Kind(
        detail="slots whose accepted API run never told us how it ended",
        repair="left for a person: look each up at the API by its api_run_id",
        fixable=False,
    ),
    "succeeded_without_receipt": Kind(
        detail="succeeded runs whose cost was never recorded",
        repair="left for a person: look the run up at the API by its api_run_id",
        fixable=False,
    ),
    "receipt_without_success": Kind(
        detail="receipts whose ledger row is missing or not succeeded",
        repair="left for a person: a receipt is never deleted",
        fixable=False,
    ),
    "schedule_in_error": Kind(
        detail="schedules that do not validate (see `schedules describe` for the reason)",
        repair="left for a person: fix the row, then `schedules resume`",
        fixable=False,
    ),
    "schedule_on_dead_grant": Kind(
        detail="enabled schedules whose grant is revoked or expired: every slot would fail",
        repair="pause them, naming the grant",
        fixable=True,
    ),
}
FIXABLE = frozenset(name for name, kind in KINDS.items() if kind.fixable)


@dataclass(frozen=True)
class RunFacts:
    """One Dagster run of graph-runs' jobs, as drift needs it."""

    run_id: str
    job_name: str
    status: str
    ledger_id: str | None = None
    batch_id: str | None = None


@dataclass(frozen=True)
class DagsterFacts:
    """Dagster's side, read before any database transaction opens.

    ``statuses`` holds the runs of ``looked_up`` that the instance has; a row whose run
    was not looked up (written since) is judged next time, never taken for gone.
    ``trusted`` is whether the instance knows any of the ledger's most recent runs.
    """

    partitions: frozenset[str]
    statuses: Mapping[str, str]
    looked_up: frozenset[str]
    trusted: bool = True
    runs: Sequence[RunFacts] = ()

    def ended(self, run_id: str) -> bool:
        """Whether a looked-up run ended, or is gone."""
        status = self.statuses.get(run_id)
        return run_id in self.looked_up and (status is None or status in DAGSTER_ENDED)


def knows_recent(statuses: Mapping[str, str], recent: Sequence[str]) -> bool:
    """Whether an instance with these run statuses is the one the daemon writes to.

    An empty instance (a ``DAGSTER_HOME`` without its ``dagster.yaml``) knows none of the
    ledger's newest runs, and must not be taken to say they are gone.
    """
    return not recent or any(run_id in statuses for run_id in recent)


def recent_run_ids(conn: sa.Connection) -> list[str]:
    """The Dagster runs of the ledger's newest rows: any instance the daemon uses has them."""
    return list(
        conn.execute(
            sa.select(run_ledger.c.dagster_run_id)
            .where(run_ledger.c.dagster_run_id.is_not(None))
            .order_by(run_ledger.c.created_at.desc())
            .limit(RECENT_LEDGER_RUNS)
        ).scalars()
    )


@dataclass
class Finding:
    """One kind of drift: which ids, and what repairs it."""

    kind: str
    ids: list[str]
    detail: str
    repair: str
    count: int = 0
    fixable: bool = False
    repaired: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """For ``--json`` and the job's metadata."""
        return asdict(self)


def _report(found: list[Finding], kind: str, ids: Sequence[str]) -> None:
    """Add a finding of ``kind`` for ``ids``, if there are any."""
    if ids:
        what = KINDS[kind]
        found.append(
            Finding(
                kind=kind,
                ids=sorted(ids)[:MAX_IDS],
                detail=what.detail,
                repair=what.repair,
                count=len(ids),
                fixable=what.fixable,
            )
        )


def _partitions(conn: sa.Connection, now: dt.datetime, facts: DagsterFacts) -> list[Finding]:
    # Every live id, unbounded: a partial list would make live schedules look orphaned.
    rows = conn.execute(
        sa.select(schedules.c.id, schedules.c.created_at).where(schedules.c.status != "deleted")
    ).all()
    live = {row.id for row in rows}
    found: list[Finding] = []
    # A schedule created moments ago gets its partition on the sensor's next tick.
    settled = {row.id for row in rows if row.created_at <= now - PARTITION_GRACE}
    missing = settled - facts.partitions
    _report(found, "partition_missing", list(missing))
    unlive = sorted(facts.partitions - live)
    deleted: set[str] = set()
    for start in range(0, len(unlive), 1000):
        deleted.update(
            conn.execute(
                sa.select(schedules.c.id).where(
                    schedules.c.id.in_(unlive[start : start + 1000]),
                    schedules.c.status == "deleted",
                )
            ).scalars()
        )
    _report(found, "partition_orphaned", list(deleted))
    _report(found, "partition_unknown", [key for key in unlive if key not in deleted])
    return found


def _schedules(conn: sa.Connection, now: dt.datetime, limits: ScheduleLimits) -> list[Finding]:
    found: list[Finding] = []
    missing = list(
        conn.execute(
            sa.select(schedules.c.id)
            .where(ACTIVE_SCHEDULE, schedules.c.next_run_at.is_(None))
            .limit(MAX_ROWS)
        ).scalars()
    )
    _report(found, "next_run_missing", missing)
    behind = []
    due = conn.execute(
        sa.select(schedules)
        .where(ACTIVE_SCHEDULE, schedules.c.next_run_at <= now)
        .order_by(schedules.c.next_run_at)
        .limit(MAX_ROWS)
    )
    for row in due:
        try:
            window = spec_from_row(row, limits, now).policies().catchup_window
        except InvalidInput:
            continue  # the sensor marks it error; that is its own finding then
        if now - row.next_run_at > window:
            behind.append(row.id)
    _report(found, "next_run_behind", behind)
    in_error = list(
        conn.execute(
            sa.select(schedules.c.id).where(schedules.c.status == "error").limit(MAX_ROWS)
        ).scalars()
    )
    _report(found, "schedule_in_error", in_error)
    dead = list(
        conn.execute(
            sa.select(schedules.c.id)
            .join(execution_grants, execution_grants.c.id == schedules.c.grant_id)
            .where(
                schedules.c.enabled,
                schedules.c.status.in_(["active", "error"]),
                sa.or_(
                    execution_grants.c.revoked_at.is_not(None),
                    execution_grants.c.expires_at <= now,
                ),
            )
            .limit(MAX_ROWS)
        ).scalars()
    )
    _report(found, "schedule_on_dead_grant", dead)
    return found


def _runs(conn: sa.Connection, now: dt.datetime, facts: DagsterFacts) -> list[Finding]:
    found: list[Finding] = []
    rows = runs_to_reconcile(conn, MAX_ROWS)
    ended = [r.id for r in rows if facts.ended(r.dagster_run_id)]
    _report(found, "run_ended_unrecorded", ended)
    expired = list(
        conn.execute(
            sa.select(dispatch_batches.c.id)
            .where(dispatch_batches.c.status == "open", dispatch_batches.c.lease_until < now)
            .limit(MAX_ROWS)
        ).scalars()
    )
    _report(found, "lease_expired", expired)
    strays = _runs_without_row(conn, [r for r in facts.runs if r.status in DAGSTER_ENDED])
    _report(found, "run_without_row", strays)
    return found


def _runs_without_row(conn: sa.Connection, runs: list[RunFacts]) -> list[str]:
    """Ended runs of graph-runs' jobs that no batch or ledger row points back to.

    A run points back when its batch exists, or a ledger row names it as its Dagster run
    (a partition run from the UI has no ledger tag; its op writes the row). An ad-hoc run
    refused by its checks has no row by design, so ad-hoc runs count only by their tag.
    """
    run_ids = [r.run_id for r in runs]
    batch_ids = sorted({r.batch_id for r in runs if r.batch_id})
    ledger_ids = sorted({r.ledger_id for r in runs if r.ledger_id})
    named: set[str] = set()
    known_batches: set[str] = set()
    known_rows: set[str] = set()
    for start in range(0, max(len(run_ids), len(batch_ids), len(ledger_ids)), 1000):
        chunk = slice(start, start + 1000)
        named.update(
            conn.execute(
                sa.select(run_ledger.c.dagster_run_id).where(
                    run_ledger.c.dagster_run_id.in_(run_ids[chunk])
                )
            ).scalars()
        )
        known_batches.update(
            conn.execute(
                sa.select(dispatch_batches.c.id).where(dispatch_batches.c.id.in_(batch_ids[chunk]))
            ).scalars()
        )
        known_rows.update(
            conn.execute(
                sa.select(run_ledger.c.id).where(run_ledger.c.id.in_(ledger_ids[chunk]))
            ).scalars()
        )
    strays = []
    for run in runs:
        if run.batch_id is not None:
            pointed = run.batch_id in known_batches
        elif run.ledger_id is not None:
            pointed = run.ledger_id in known_rows
        else:
            pointed = run.run_id in named or run.job_name == "graph_run_adhoc_job"
        if not pointed:
            strays.append(run.run_id)
    return strays


def _unsettled(conn: sa.Connection, now: dt.datetime) -> list[str]:
    recent = run_ledger.c.created_at >= now - UNSETTLED_WINDOW
    lost = conn.execute(
        sa.select(run_ledger.c.id)
        .where(
            recent,
            run_ledger.c.api_run_id.is_not(None),
            run_ledger.c.status.in_(["failed", "cancelled"]),
            run_ledger.c.error_code.in_(SETTLED_WITHOUT_THE_API),
        )
        .limit(MAX_ROWS)
    ).scalars()
    in_flight = conn.execute(
        sa.select(run_ledger)
        .where(
            recent,
            run_ledger.c.api_run_id.is_not(None),
            run_ledger.c.started_at.is_not(None),
            run_ledger.c.status.in_(["running", "cancelling"]),
        )
        .limit(MAX_ROWS)
    )
    return [*lost, *(row.id for row in in_flight if give_up_at(row) < now)]


def _money(conn: sa.Connection, now: dt.datetime) -> list[Finding]:
    found: list[Finding] = []
    _report(found, "api_run_unsettled", _unsettled(conn, now))
    no_receipt = list(
        conn.execute(
            sa.select(run_ledger.c.id)
            .select_from(
                run_ledger.outerjoin(
                    charge_receipts, charge_receipts.c.graph_run_id == run_ledger.c.id
                )
            )
            .where(run_ledger.c.status == "succeeded", charge_receipts.c.graph_run_id.is_(None))
            .limit(MAX_ROWS)
        ).scalars()
    )
    _report(found, "succeeded_without_receipt", no_receipt)
    stray_receipts = list(
        conn.execute(
            sa.select(charge_receipts.c.graph_run_id)
            .select_from(
                charge_receipts.outerjoin(
                    run_ledger, run_ledger.c.id == charge_receipts.c.graph_run_id
                )
            )
            .where(sa.or_(run_ledger.c.id.is_(None), run_ledger.c.status != "succeeded"))
            .limit(MAX_ROWS)
        ).scalars()
    )
    _report(found, "receipt_without_success", stray_receipts)
    return found


def find_drift(
    conn: sa.Connection,
    *,
    now: dt.datetime,
    limits: ScheduleLimits,
    dagster: DagsterFacts | None,
) -> list[Finding]:
    """Every finding, in a fixed order; without ``dagster``, only the database's side."""
    found: list[Finding] = []
    if dagster is not None and not dagster.trusted:
        _report(found, "dagster_instance_unknown", recent_run_ids(conn))
    if dagster is not None:
        found += _partitions(conn, now, dagster)
    found += _schedules(conn, now, limits)
    if dagster is not None:
        found += _runs(conn, now, dagster)
    return found + _money(conn, now)
