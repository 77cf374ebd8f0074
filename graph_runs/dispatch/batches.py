"""Dispatch batches: which slots one Dagster run fires, and the lease that run holds.

A slot is a ledger row, not a Dagster run. In the claim's transaction the sensor groups the
claimed (``pending``) rows by due instant into batches of at most ``batch_size`` and records
each batch; the batch's identity and attempt make its run key, ``batch:{id}:{attempt}``, so a
tick that dies after its commit asks for the same run again.

The run that works a batch holds a lease on it, in this table, and renews it while it works.
Nothing trusts the run to end well: when the lease expires (the worker was killed, its node
lost) or the Dagster run ends with slots unrecorded, the sensor moves the batch to its next
attempt, whose run resumes the slots without an outcome under the same idempotency keys.
A run of an older attempt may no longer renew the lease, so it stops firing. After
``max_attempts`` the slots left are settled ``failed`` with the code ``dispatch_lost``.
"""

import datetime as dt
import math
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from graph_runs.core.ids import new_id
from graph_runs.core.statuses import CANCELLED, CANCELLING, FAILED, PENDING, QUEUED, RUNNING
from graph_runs.dispatch.api_runs import api_may_still_run
from graph_runs.dispatch.ledger import TAG_PREFIX, record_outcome
from graph_runs.dispatch.reconcile import DAGSTER_ENDED
from graph_runs.execution_api.client import Outcome
from graph_runs.store import slot_status
from graph_runs.store.tables import dispatch_batches, run_ledger

OPEN = "open"
DONE = "done"
UNFINISHED = (PENDING, QUEUED, RUNNING, CANCELLING)
# A batch's slots still its runs' to finish: without an outcome, and not handed off to the
# sensor's polls (graph_runs/dispatch/polling.py), which the batch no longer waits for.
STILL_THE_BATCHS = sa.and_(run_ledger.c.status.in_(UNFINISHED), run_ledger.c.poll_after.is_(None))
DEFAULT_MAX_ATTEMPTS = 3
DISPATCH_LOST = "dispatch_lost"
MAX_BATCHED_PER_TICK = 20_000
# Fewest slots worth a dispatch run of their own when a burst is spread over several runs:
# a run costs a process and seconds of CPU to start.
MIN_SPREAD_SLOTS = 250
# Slots per run below which a tick's accounts share runs rather than each launching one.
MIN_ACCOUNT_RUN_SLOTS = 50
BATCH_ID_TAG = f"{TAG_PREFIX}batch_id"
BATCH_ATTEMPT_TAG = f"{TAG_PREFIX}batch_attempt"
BATCH_RUN_KEY_TAG = f"{TAG_PREFIX}batch_run_key"


def run_key(batch_id: str, attempt: int) -> str:
    """The Dagster run key of one attempt at a batch."""
    return f"batch:{batch_id}:{attempt}"


# A batch attempt's lease fields before its run takes the lease: no run, nothing renewed.
NO_LEASE: dict[str, Any] = {
    "dagster_run_id": None, "lease_until": None, "beats": 0, "seen_beats": None, "seen_at": None,
}  # fmt: skip


@dataclass(frozen=True)
class Batch:
    """A batch as the sensor and the dispatch run see it."""

    id: str
    attempt: int
    size: int
    due_at: dt.datetime
    partition_key: str | None
    dagster_run_id: str | None
    lease_until: dt.datetime | None
    beats: int = 0
    seen_beats: int | None = None
    seen_at: dt.datetime | None = None

    def next_attempt(self) -> "Batch":
        """The batch as ``_next_attempt`` leaves it: the next attempt, no run, no lease yet."""
        return replace(self, attempt=self.attempt + 1, **NO_LEASE)

    @property
    def run_key(self) -> str:
        """This attempt's Dagster run key."""
        return run_key(self.id, self.attempt)

    def run_tags(self) -> dict[str, str]:
        """The tags of this attempt's Dagster run, by which the sensor finds it."""
        return {
            BATCH_ID_TAG: self.id,
            BATCH_ATTEMPT_TAG: str(self.attempt),
            BATCH_RUN_KEY_TAG: self.run_key,
            f"{TAG_PREFIX}batch_size": str(self.size),
        }

    @classmethod
    def from_row(cls, row: Any) -> "Batch":
        """Build from a ``dispatch_batches`` row."""
        return cls(
            id=row.id,
            attempt=row.attempt,
            size=row.size,
            due_at=row.due_at,
            partition_key=row.partition_key,
            dagster_run_id=row.dagster_run_id,
            lease_until=row.lease_until,
            beats=row.beats,
            seen_beats=row.seen_beats,
            seen_at=row.seen_at,
        )


def _chunks(rows: list[Any], batch_size: int, parallel_runs: int) -> list[list[Any]]:
    """Rows in order, cut into equal batches of at most ``batch_size`` (spread, as above)."""
    runs = max(math.ceil(len(rows) / batch_size), min(parallel_runs, len(rows) // MIN_SPREAD_SLOTS))
    size = math.ceil(len(rows) / runs) if rows else batch_size
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def _by_account(rows: list[Any], batch_size: int, parallel_runs: int) -> list[list[Any]]:
    """One billing account's slots per batch, each account cut as a tick's slots would be.

    The spread over parallel runs is shared out among the accounts by their share of the
    slots, so that a few accounts make no more runs than the spread would anyway.
    """
    accounts: dict[str | None, list[Any]] = {}
    for row in rows:
        accounts.setdefault(row.billing_account, []).append(row)
    chunks: list[list[Any]] = []
    for own in accounts.values():
        share = max(1, parallel_runs * len(own) // len(rows))
        chunks.extend(_chunks(own, batch_size, share))
    return sorted(chunks, key=lambda chunk: (chunk[0].due, chunk[0].id))


def form_batches(
    conn: sa.Connection,
    *,
    now: dt.datetime,
    horizon: dt.datetime,
    batch_size: int,
    parallel_runs: int = 1,
    account_batches: int = 0,
    limit: int = MAX_BATCHED_PER_TICK,
) -> list[Batch]:
    """Put claimed slots due by ``horizon`` into new batches, earliest instant first.

    Batches are of at most ``batch_size`` slots, of equal size, and at least
    ``parallel_runs`` of them when there are ``MIN_SPREAD_SLOTS`` slots for each: one
    dispatch run is one process, and 1,000 slots fired by four runs side by side finish
    sooner than by one. Reads only the partial index of unbatched ``pending`` rows. A batch
    of one slot of a schedule keeps the schedule as its partition key, so its run shows on
    that partition.

    When the slots belong to at most ``account_batches`` billing accounts, each batch holds
    one account's slots, provided that makes no more runs than ``parallel_runs`` nor a run
    for each ``MIN_ACCOUNT_RUN_SLOTS`` slots (or no more than the size rule makes anyway):
    its run then carries that owner's tags, and is found from the Runs page by them
    (``batch_tags``). Otherwise runs would queue behind each other, or launch a process
    for a handful of slots, and batches mix accounts as before.
    """
    due = sa.func.coalesce(run_ledger.c.due_at, run_ledger.c.created_at)
    rows = list(
        conn.execute(
            sa.select(
                run_ledger.c.id,
                run_ledger.c.schedule_id,
                run_ledger.c.billing_account,
                due.label("due"),
            )
            .where(run_ledger.c.status == PENDING, run_ledger.c.batch_id.is_(None))
            .where(sa.or_(run_ledger.c.due_at.is_(None), run_ledger.c.due_at <= horizon))
            .order_by(due, run_ledger.c.id)
            .limit(limit)
        )
    )
    batches: list[Batch] = []
    assignments: dict[str, list[str]] = {}
    chunks = _chunks(rows, batch_size, parallel_runs)
    if len({row.billing_account for row in rows}) <= account_batches:
        own = _by_account(rows, batch_size, parallel_runs)
        # Never more runs than run side by side (ten runs of 100 slots under four at a time
        # fired 1,000 slots at 0.42 times the rate of four runs of 250), and never a run
        # launched for fewer than MIN_ACCOUNT_RUN_SLOTS: a run is a process, or a pod.
        worth = min(parallel_runs, len(rows) // MIN_ACCOUNT_RUN_SLOTS)
        if len(own) <= max(worth, len(chunks)):
            chunks = own
    for chunk in chunks:
        batch = Batch(
            id=new_id("batch"),
            attempt=1,
            size=len(chunk),
            due_at=chunk[0].due,
            partition_key=chunk[0].schedule_id if len(chunk) == 1 else None,
            dagster_run_id=None,
            lease_until=None,
        )
        batches.append(batch)
        assignments[batch.id] = [row.id for row in chunk]
    if not batches:
        return []
    conn.execute(
        dispatch_batches.insert(),
        [
            {
                "id": b.id,
                "status": OPEN,
                "attempt": b.attempt,
                "size": b.size,
                "due_at": b.due_at,
                "partition_key": b.partition_key,
                "created_at": now,
                "updated_at": now,
            }
            for b in batches
        ],
    )
    slot_status.assign_batch(conn, assignments)
    return batches


def open_batches(conn: sa.Connection, limit: int) -> list[Batch]:
    """Batches not yet done, earliest instant first (a partial index: O(open batches))."""
    query = (
        sa.select(dispatch_batches)
        .where(dispatch_batches.c.status == OPEN)
        .order_by(dispatch_batches.c.due_at)
        .limit(limit)
    )
    return [Batch.from_row(row) for row in conn.execute(query)]


def get_batch(conn: sa.Connection, batch_id: str) -> Any:
    """The batch row, or None."""
    return conn.execute(
        sa.select(dispatch_batches).where(dispatch_batches.c.id == batch_id)
    ).one_or_none()


def _fenced(batch_id: str, attempt: int) -> sa.Update:
    return dispatch_batches.update().where(
        dispatch_batches.c.id == batch_id,
        dispatch_batches.c.attempt == attempt,
        dispatch_batches.c.status == OPEN,
    )


def take_lease(
    conn: sa.Connection,
    batch_id: str,
    attempt: int,
    *,
    dagster_run_id: str,
    now: dt.datetime,
    lease: dt.timedelta,
) -> bool:
    """The dispatch run of ``attempt`` takes the batch; False if that attempt is over."""
    return bool(
        conn.execute(
            _fenced(batch_id, attempt).values(
                dagster_run_id=dagster_run_id,
                lease_until=now + lease,
                beats=dispatch_batches.c.beats + 1,
                updated_at=now,
            )
        ).rowcount
    )


def holds_lease(
    conn: sa.Connection, batch_id: str, attempt: int, *, dagster_run_id: str, now: dt.datetime
) -> bool:
    """Whether ``dagster_run_id`` still holds the batch's lease for ``attempt`` at ``now``.

    The fence of every fire: called in the transaction that moves slots to ``running``, with
    the batch row locked on Postgres (SQLite's writers are serial), so the sensor cannot
    move the batch to its next attempt between the check and the fire. ``lease_until`` was
    written by this run's own clock, and ``now`` is that clock too. A run that woke after its
    lease moved on, or a second run of the same attempt (the lease went to whichever took it
    last), fires nothing.
    """
    query = sa.select(
        dispatch_batches.c.status,
        dispatch_batches.c.attempt,
        dispatch_batches.c.dagster_run_id,
        dispatch_batches.c.lease_until,
    ).where(dispatch_batches.c.id == batch_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).one_or_none()
    return (
        row is not None
        and row.status == OPEN
        and row.attempt == attempt
        and row.dagster_run_id == dagster_run_id
        and row.lease_until is not None
        and row.lease_until > now
    )


def renew_lease(
    conn: sa.Connection, batch_id: str, attempt: int, *, now: dt.datetime, lease: dt.timedelta
) -> bool:
    """Extend the lease; False once the sensor has moved the batch on (stop firing)."""
    return bool(
        conn.execute(
            _fenced(batch_id, attempt).values(
                lease_until=now + lease, beats=dispatch_batches.c.beats + 1, updated_at=now
            )
        ).rowcount
    )


def note_started(
    conn: sa.Connection, batch: Batch, *, now: dt.datetime, grace: dt.timedelta
) -> None:
    """The batch's run has started but taken no lease yet: it has ``grace`` to take one.

    Without this, a worker killed between its start and its first lease would hold the
    batch for ever.
    """
    conn.execute(
        _fenced(batch.id, batch.attempt)
        .where(dispatch_batches.c.lease_until.is_(None))
        .values(lease_until=now + grace, updated_at=now)
    )


def observe_beats(conn: sa.Connection, batch: Batch, *, now: dt.datetime) -> None:
    """The sensor saw ``batch.beats`` renewals at ``now`` (its clock): the lease runs from here.

    Only for the count it saw: a renewal since then is seen, and timed, next tick.
    """
    conn.execute(
        _fenced(batch.id, batch.attempt)
        .where(dispatch_batches.c.beats == batch.beats)
        .values(seen_beats=batch.beats, seen_at=now)
    )


def unfinished_rows(conn: sa.Connection, batch_id: str) -> list[Any]:
    """The batch's slots that have no outcome yet and are not handed off, in firing order."""
    return list(
        conn.execute(
            sa.select(run_ledger)
            .where(run_ledger.c.batch_id == batch_id, STILL_THE_BATCHS)
            .order_by(run_ledger.c.due_at, run_ledger.c.id)
        )
    )


def _unfinished_count(conn: sa.Connection, batch_id: str) -> int:
    return conn.execute(
        sa.select(sa.func.count())
        .select_from(run_ledger)
        .where(run_ledger.c.batch_id == batch_id, STILL_THE_BATCHS)
    ).scalar_one()


def finish_if_done(conn: sa.Connection, batch_id: str, *, now: dt.datetime) -> bool:
    """Close the batch once every slot has an outcome; True if it is closed."""
    if _unfinished_count(conn, batch_id):
        return False
    conn.execute(
        dispatch_batches.update()
        .where(dispatch_batches.c.id == batch_id, dispatch_batches.c.status == OPEN)
        .values(status=DONE, finished_at=now, updated_at=now, lease_until=None)
    )
    return True


@dataclass(frozen=True)
class Redispatched:
    """What the sensor did with a batch whose run is gone: next attempt, lost, or done."""

    batch_id: str
    action: str  # "retry", "lost", "cancelled" or "done"
    unfinished: int = 0
    why: str = ""


# Dagster's run statuses of a run whose worker is being launched or at work.
DAGSTER_GOING = frozenset({"STARTING", "STARTED", "CANCELING"})


@dataclass(frozen=True)
class Recovery:
    """How long a batch's run may go unseen before its batch goes to the next attempt."""

    lease: dt.timedelta = dt.timedelta(seconds=60)
    start_timeout: dt.timedelta = dt.timedelta(seconds=180)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


@dataclass(frozen=True)
class Verdict:
    """What an open batch needs, by its run's status: its start noted, or to move on."""

    grace: dt.timedelta | None = None  # note the run started: it has this long to lease
    observe: bool = False  # note, by the sensor's clock, the lease renewals seen now
    why: str | None = None  # move the batch on (next attempt, settled, or cancelled)
    cancelled: bool = False  # a person cancelled the run


def assess(
    batch: Batch, *, run_id: str, run_status: str | None, now: dt.datetime, limits: Recovery
) -> Verdict | None:
    """What the sensor must do with an open batch whose attempt has a Dagster run; None: nothing.

    Reads no database, so a tick opens a write transaction only for a batch that needs one.
    ``run_status`` is the run's Dagster status (None: the run no longer exists). A run that
    ended, or stopped renewing its lease, gives the batch to its next attempt (or settles
    it, after the last); one a person cancelled cancels its slots; one still starting gets
    the start timeout to take its lease, one started a lease.
    """
    if run_status is None or run_status in DAGSTER_ENDED:
        why = f"Dagster run {run_id} {'is gone' if run_status is None else 'ended ' + run_status}"
        return Verdict(why=why, cancelled=run_status == "CANCELED")
    if run_status not in DAGSTER_GOING:
        return None
    if batch.beats == 0:
        # Not leased yet. A run still STARTING (its worker being launched: an image pull, a
        # pod being scheduled) gets the launcher's start timeout; one whose worker is up, a
        # lease. That grace is written and read by the sensor's clock alone.
        if batch.lease_until is None:
            return Verdict(grace=limits.start_timeout if run_status == "STARTING" else limits.lease)
        if batch.lease_until < now:
            return Verdict(why=f"Dagster run {run_id} never took its lease ({run_status})")
        return None
    # Leased: the run's renewals are beats, timed by this clock from when each was first
    # seen. The lease's expiry, written by the run's clock, is never read here.
    if batch.seen_beats != batch.beats or batch.seen_at is None:
        return Verdict(observe=True)
    if now - batch.seen_at > limits.lease:
        return Verdict(
            why=(
                f"Dagster run {run_id} stopped renewing its lease ({run_status}): no renewal "
                f"seen for {(now - batch.seen_at).total_seconds():.0f} s"
            )
        )
    return None


def recover(
    conn: sa.Connection, batch: Batch, verdict: Verdict, *, now: dt.datetime, limits: Recovery
) -> Redispatched | None:
    """Carry out ``assess``'s verdict in ``conn``; None when only the start was noted."""
    if verdict.grace is not None:
        note_started(conn, batch, now=now, grace=verdict.grace)
        return None
    if verdict.observe:
        observe_beats(conn, batch, now=now)
        return None
    why = verdict.why or ""
    if verdict.cancelled:
        # Someone cancelled the run in Dagster: a decision, not a fault to retry.
        moved = cancel_by_person(conn, batch, now=now, why=why)
    else:
        moved = redispatch(conn, batch, now=now, why=why, max_attempts=limits.max_attempts)
    return replace(moved, why=why)


def redispatch(
    conn: sa.Connection,
    batch: Batch,
    *,
    now: dt.datetime,
    why: str,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Redispatched:
    """Move a batch whose run died or ended early to its next attempt, or settle it lost.

    Fenced on the attempt the caller saw, so two ticks racing move it once. A batch whose
    slots all have outcomes (its run finished as the sensor looked) is only closed. After
    ``max_attempts`` a slot that was fired is never given up on while its API run may be
    going: the batch gets another attempt, which resumes those slots (same key: the API
    answers the run it has, or runs it once), until the API says they ended or their
    timeout and ``GIVE_UP_MARGIN`` pass. Fired counts, not only accepted: a run killed while
    it polled had not kept the API's run id, and its request did reach the API (the fault
    simulator's seeds 13 and 25 found such slots settled lost and cancelled, unbilled).
    """
    current = get_batch(conn, batch.id)
    if current is None or current.status != OPEN or current.attempt != batch.attempt:
        return Redispatched(batch.id, "done")
    left = unfinished_rows(conn, batch.id)
    if not left:
        finish_if_done(conn, batch.id, now=now)
        return Redispatched(batch.id, "done")
    polled = {row.id for row in left if api_may_still_run(row, now, accepted=False)}
    if batch.attempt >= max_attempts:
        rest = [row for row in left if row.id not in polled]
        # Fired, but past the bound (a host that slept through it, say): the API may have
        # ended their runs meanwhile. One poll asks before they are given up (polling.py).
        for row in rest:
            if row.started_at is not None:
                slot_status.hand_off(conn, row.id, row.api_run_id, poll_after=now)
        _settle_lost(conn, [r for r in rest if r.started_at is None], max_attempts, why, now)
    if batch.attempt < max_attempts or polled:
        _next_attempt(conn, batch, now)
        unfinished = len(left) if batch.attempt < max_attempts else len(polled)
        return Redispatched(batch.id, "retry", unfinished)
    finish_if_done(conn, batch.id, now=now)
    return Redispatched(batch.id, "lost", len(left))


def _next_attempt(conn: sa.Connection, batch: Batch, now: dt.datetime) -> None:
    """Give the batch to its next attempt, whose run key the sensor asks a run for."""
    conn.execute(
        _fenced(batch.id, batch.attempt).values(
            attempt=batch.attempt + 1, **NO_LEASE, updated_at=now
        )
    )


def lost_outcome(row: Any, *, failed_message: str, cancelled_message: str) -> Outcome:
    """What a slot given up on without the API's word records, its API run id kept.

    ``cancelled`` if it was being cancelled (the cancel's code kept), else ``dispatch_lost``.
    """
    if row.status == CANCELLING:
        return Outcome(
            status=CANCELLED,
            api_run_id=row.api_run_id,
            error_code=row.error_code or "cancelled",
            error_message=cancelled_message,
        )
    return Outcome(
        status=FAILED,
        api_run_id=row.api_run_id,
        error_code=DISPATCH_LOST,
        error_message=failed_message[:2000],
    )


def _settle_lost(
    conn: sa.Connection, rows: list[Any], max_attempts: int, why: str, now: dt.datetime
) -> None:
    for row in rows:
        outcome = lost_outcome(
            row,
            failed_message=(
                f"{max_attempts} dispatch runs ended before recording an outcome; the last: {why}"
            ),
            cancelled_message=row.error_message or "cancelled while its dispatch run was lost",
        )
        record_outcome(conn, row.id, outcome, dagster_run_id=row.dagster_run_id or "", now=now)


def cancel_by_person(
    conn: sa.Connection, batch: Batch, *, now: dt.datetime, why: str
) -> Redispatched:
    """A person cancelled the batch's dispatch run: a cancel, not a fault to retry.

    Slots it had not fired end ``cancelled``; fired ones become ``cancelling`` and the next
    attempt resumes each under its key, polls its API run to its end and records it
    cancelled, with its usage and receipt (the API run went on; the money was spent).
    """
    current = get_batch(conn, batch.id)
    if current is None or current.status != OPEN or current.attempt != batch.attempt:
        return Redispatched(batch.id, "done")
    slot_status.cancel_batch(
        conn,
        batch.id,
        code="dispatch_run_cancelled",
        message=f"its dispatch run was cancelled in Dagster ({why})"[:2000],
        now=now,
    )
    left = unfinished_rows(conn, batch.id)
    # A fired slot is resumed with its key, whether or not its run's id came back: the
    # request may have reached the API, and a run there must be polled and billed.
    polled = {row.id for row in left if api_may_still_run(row, now, accepted=False)}
    _settle_lost(conn, [row for row in left if row.id not in polled], 1, why, now)
    if polled:
        _next_attempt(conn, batch, now)
        return Redispatched(batch.id, "retry", len(polled))
    finish_if_done(conn, batch.id, now=now)
    return Redispatched(batch.id, "cancelled", len(left))
