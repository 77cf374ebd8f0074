"""A dispatch run's work: hold the batch's lease, fire each slot at its instant, record it.

``Dispatcher.run_batch`` takes the batch's lease (or finds its attempt replaced and does
nothing), then for each due instant of the batch, earliest first: waits until the instant,
decides and fires its slots (``graph_runs.dispatch.firing``), and hands their calls to one
``ConcurrentCaller`` session, so that slots of many instants and accounts are in flight at
once within the caller's bounds. Outcomes are recorded as calls finish, many per
transaction, by a writer that never lets one slot's failure lose another's record.

A heartbeat renews the lease while the run works, and stops the run firing once the sensor
has moved the batch to another attempt; every fire is also fenced on the lease in its own
transaction. A slot asked to stop while its call is in flight (overlap cancel_other, a pause
with --terminate) is not abandoned: its API run goes on, so it is polled to its end and
recorded cancelled, with what it cost.

Each call first takes one of its billing account's call places, counted in the database over
every run (``graph_runs.dispatch.call_places``), and only when the run has room to make it
now: most are taken in the fire's own transaction. A call that ends hands its place to the
next slot of its account waiting in this run, in memory; any other waiting slot gets one at
the run's next outcome write, or at its next ask (``DispatchLimits.place_poll_seconds``).

Once every slot is fired, the run polls for ``DispatchLimits.hand_off`` more; then each
call still polling an accepted API run stops (``handed_off``), its row keeps its API run id
and gets a ``poll_after``, and the run ends: the sensor polls those runs from then on
(``graph_runs.dispatch.polling``), so a slow graph keeps no place in the run queue.

Clock and sleep are injected: tests run a batch at exact instants without waiting.
"""

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from graph_runs.core.statuses import FAILED
from graph_runs.dispatch import batches, call_places
from graph_runs.dispatch.firing import Firing, decide_and_fire
from graph_runs.dispatch.ledger import record_outcome
from graph_runs.dispatch.place_queue import PlaceQueue
from graph_runs.execution_api.client import Outcome
from graph_runs.execution_api.concurrent_calls import (
    HANDED_OFF,
    Call,
    CallSession,
    ConcurrentCaller,
    Result,
)
from graph_runs.store import slot_status

logger = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
# The most a run waits past an instant by its own clock for the database's to reach it.
MAX_CLOCK_SKEW = dt.timedelta(seconds=30)
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class DispatchLimits:
    """How a dispatch run paces itself."""

    lease: dt.timedelta = dt.timedelta(seconds=60)
    heartbeat_seconds: float = 15.0
    flush_seconds: float = 0.25
    flush_size: int = 200
    # How long the run polls after its last fire before it hands the API runs still going
    # to the sensor's polls and ends, giving its place in the run queue back.
    hand_off: dt.timedelta = dt.timedelta(minutes=5)
    # How often a call waiting for a call place asks whether one came free in another run
    # (one freed in this run is handed over as its call ends, or at the next outcome write).
    place_poll_seconds: float = 0.25


@dataclass(frozen=True)
class Recorded:
    """One slot's recorded outcome, for the run's events and its summary."""

    row: Any
    outcome: Outcome
    recorded: dict[str, Any]
    attempt: int

    @classmethod
    def refused(cls, row: Any, code: str, message: str | None, attempt: int) -> "Recorded":
        """A slot its grant check refused before any call, already recorded failed."""
        outcome = Outcome(status=FAILED, error_code=code, error_message=message)
        return cls(
            row, outcome, {"status": FAILED, "error_code": code, "ledger_id": row.id}, attempt
        )


@dataclass
class Report:
    """What one dispatch run did."""

    batch_id: str | None = None
    attempt: int = 0
    replaced: bool = False  # the batch had moved to another attempt: nothing was fired
    lease_lost: bool = False  # it moved on while this run worked: the rest was left
    fired: int = 0
    held: Counter[str] = field(default_factory=Counter)
    recorded: list[Recorded] = field(default_factory=list)
    # Slots fired whose outcome is not known (the API run still runs, or recording failed):
    # the next attempt resumes them.
    unrecorded: list[str] = field(default_factory=list)
    # Slots whose API run was still going at the hand-off: the sensor polls them.
    handed_off: list[str] = field(default_factory=list)
    first_fired_lag: float | None = None

    @property
    def failed(self) -> list[Recorded]:
        """Slots recorded as failed."""
        return [r for r in self.recorded if r.recorded["status"] == FAILED]

    @property
    def statuses(self) -> Counter[str]:
        """Recorded outcomes and held slots by status."""
        counts: Counter[str] = Counter(r.recorded["status"] for r in self.recorded)
        counts.update(self.held)
        return counts


class Dispatcher:
    """Fires one batch (or given rows) through the execution API and records each outcome."""

    def __init__(
        self,
        engine: sa.Engine,
        caller: ConcurrentCaller,
        *,
        dagster_run_id: str,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        limits: DispatchLimits = DispatchLimits(),
        on_recorded: Callable[[list[Recorded]], None] = lambda _: None,
    ) -> None:
        self.engine = engine
        self.caller = caller
        self.dagster_run_id = dagster_run_id
        self.clock = clock
        self.sleep = sleep
        self.limits = limits
        self.on_recorded = on_recorded
        self._results: asyncio.Queue[tuple[Result, Any, int] | None] = asyncio.Queue()
        self._calls: dict[str, asyncio.Task[None]] = {}
        self._lost = False
        self._places = PlaceQueue()
        # This run's calls that hold a place and have not ended, and the lock that keeps
        # each transaction taking places from counting the same room as another.
        self._in_call = 0
        self._taking = asyncio.Lock()
        self._placer: asyncio.Task[None] | None = None
        # A batch's run calls only the slots it still fires (another attempt may have fired
        # them since); the slots of ``run_started`` are the run's alone.
        self._fenced = False

    # -- entry points ----------------------------------------------------------------------

    async def run_batch(self, batch_id: str, attempt: int) -> Report:
        """Work one attempt at a batch; returns what was done."""
        report = Report(batch_id=batch_id, attempt=attempt)
        now = self.clock()
        with self.engine.begin() as conn:
            taken = batches.take_lease(
                conn,
                batch_id,
                attempt,
                dagster_run_id=self.dagster_run_id,
                now=now,
                lease=self.limits.lease,
            )
            rows = batches.unfinished_rows(conn, batch_id) if taken else []
        if not taken:
            report.replaced = True
            return report
        self._fenced = True
        heartbeat = asyncio.create_task(self._heartbeat(batch_id, attempt))
        try:
            await self._fire_all(rows, batch_id, attempt, report)
        finally:
            heartbeat.cancel()
        report.lease_lost = self._lost
        with self.engine.begin() as conn:
            batches.finish_if_done(conn, batch_id, now=self.clock())
        return report

    async def run_started(self, rows: Sequence[Any]) -> Report:
        """Call the API for slots already started in this run, needing no lease.

        An approved slot, or a partition run launched from the UI: the run is theirs alone.
        """
        report = Report(attempt=1)
        # Their call places are taken before the first call, as a batch's are at its fire.
        taken = None
        if rows:
            taken = await asyncio.to_thread(self._take, [f.row.id for f in rows], (), self._room())
            self._in_call += len(taken.placed)
        recorder = asyncio.create_task(self._recorder(report))
        async with self.caller.session(dagster_run_id=self.dagster_run_id) as session:
            for firing in rows:
                placed = taken is not None and firing.row.id in taken.placed
                self._start_call(session, firing, 1, placed=placed)
            await self._drain(recorder, report)
        return report

    # -- the work --------------------------------------------------------------------------

    async def _fire_all(self, rows: list[Any], batch_id: str, attempt: int, report: Report) -> None:
        groups: dict[dt.datetime, list[str]] = {}
        for row in rows:
            groups.setdefault(row.due_at or row.created_at, []).append(row.id)
        recorder = asyncio.create_task(self._recorder(report))
        async with self.caller.session(dagster_run_id=self.dagster_run_id) as session:
            for due in sorted(groups):
                if not await self._wait_until(due):
                    break
                decided = await self._decide_on_time(groups[due], batch_id, attempt, due)
                now = self.clock()
                if decided.fenced:
                    # The lease moved on (or ran out) while this run waited: another attempt
                    # owns these slots now.
                    logger.warning(
                        "batch %s: attempt %d no longer holds the lease: firing no more",
                        batch_id,
                        attempt,
                    )
                    self._lost = True
                    break
                report.held.update(decided.held)
                report.fired += len(decided.firing)
                if decided.firing and report.first_fired_lag is None:
                    report.first_fired_lag = (now - due).total_seconds()
                for firing in decided.firing:
                    self._start_call(
                        session, firing, attempt, placed=firing.row.id in decided.placed
                    )
                denied = [
                    Recorded.refused(row, code, message, attempt)
                    for row, code, message in decided.denied
                ]
                report.recorded.extend(denied)
                if denied:
                    # Recorded by the decision itself: shown like any other outcome.
                    self.on_recorded(denied)
            # Everything is fired: what still runs after hand_off is the sensor's to poll.
            session.hand_off_in(self.limits.hand_off.total_seconds())
            await self._drain(recorder, report)

    async def _decide_on_time(
        self, ledger_ids: list[str], batch_id: str, attempt: int, due: dt.datetime
    ) -> Any:
        """Decide at ``due``; while the database's clock says it is early, wait and ask again.

        This run's clock may run seconds ahead of the others'. Waiting is bounded by
        ``MAX_CLOCK_SKEW`` of this run's clock: a database clock further behind than any
        synchronised machine is taken to be the wrong one, said in the log, and not waited for.
        """
        while True:
            decided = await self._decide_placing(ledger_ids, batch_id, attempt)
            if not decided.early_by:
                return decided
            if self.clock() - due >= MAX_CLOCK_SKEW:
                logger.error(
                    "batch %s: the database's clock is %.1f s behind this run's at %s: "
                    "firing on this run's clock",
                    batch_id,
                    decided.early_by,
                    due.isoformat(),
                )
                return await self._decide_placing(ledger_ids, batch_id, attempt, on_own_clock=True)
            await self.sleep(min(decided.early_by, self.limits.heartbeat_seconds))

    async def _decide_placing(
        self, ledger_ids: list[str], batch_id: str, attempt: int, *, on_own_clock: bool = False
    ) -> Any:
        """One decision, taking places within this run's room; the calls placed are counted."""
        async with self._taking:
            decided = await asyncio.to_thread(
                self._decide,
                ledger_ids,
                batch_id,
                attempt,
                self.clock(),
                on_own_clock,
                self._room(),
            )
            self._in_call += len(decided.placed)
        return decided

    def _decide(
        self,
        ledger_ids: list[str],
        batch_id: str,
        attempt: int,
        now: dt.datetime,
        on_own_clock: bool = False,
        room: int | None = None,
    ) -> Any:
        with self.engine.begin() as conn:
            return decide_and_fire(
                conn,
                ledger_ids,
                batch_id=batch_id,
                dagster_run_id=self.dagster_run_id,
                attempt=attempt,
                now=now,
                on_own_clock=on_own_clock,
                max_calls_per_account=self.caller.max_per_account,
                room=room,
            )

    async def _wait_until(self, due: dt.datetime) -> bool:
        """Sleep until ``due``; False if the lease was lost meanwhile (stop firing)."""
        while not self._lost:
            remaining = (due - self.clock()).total_seconds()
            if remaining <= 0:
                return True
            await self.sleep(min(remaining, self.limits.heartbeat_seconds))
        return False

    def _start_call(
        self, session: CallSession, firing: Firing, attempt: int, *, placed: bool = False
    ) -> None:
        row = firing.row
        if not placed:
            self._places.join(row)
            if self._placer is None or self._placer.done():
                self._placer = asyncio.create_task(self._place_waiting())

        async def call() -> None:
            if not await self._places.turn(row.id):
                return
            try:
                result = await session.call(
                    Call(
                        idempotency_key=row.idempotency_key,
                        graph_id=row.graph_id,
                        body=firing.body,
                        billing_account=row.billing_account,
                        timeout_seconds=row.timeout_seconds,
                        api_run_id=row.api_run_id,
                    )
                )
            except BaseException:
                self._in_call -= 1
                raise
            # Its place (and its room in this run) goes straight to the next slot of its
            # account waiting here, if any: a hand-over costs no transaction.
            account = row.billing_account
            if not account or self._lost or not self._places.hand_over(account):
                self._in_call -= 1
            await self._results.put((result, row, attempt))

        self._calls[row.id] = asyncio.create_task(call())

    async def _drain(self, recorder: asyncio.Task[None], report: Report) -> None:
        """Wait for every call, then for the recorder to write the last outcomes."""
        while self._calls:
            pending = list(self._calls.values())
            await asyncio.gather(*pending, return_exceptions=True)
            for key in [k for k, t in self._calls.items() if t.done()]:
                del self._calls[key]
        await self._results.put(None)
        await recorder
        # Fired, never called: the next attempt (or whoever settles the row) has them.
        report.unrecorded.extend(sorted(self._places.not_called))

    # -- call places -----------------------------------------------------------------------

    async def _place_waiting(self) -> None:
        """While calls wait for a call place, ask now and then whether one came free."""
        while self._places:
            await self.sleep(self.limits.place_poll_seconds)
            if not self._places:
                return
            if self._lost:
                self._places.abandon()
                return
            async with self._taking:
                wanted, release = self._places.waiting(), sorted(self._places.unreleased)
                try:
                    taken = await asyncio.to_thread(self._take, wanted, release, self._room())
                except Exception as exc:  # noqa: BLE001 - asked again at the next poll
                    logger.warning("could not take call places: %s", exc)
                    continue
                self._places.unreleased.difference_update(release)
                self._in_call += self._places.wake(taken)

    def _room(self) -> int:
        """How many more calls this run can make at once: a place is taken only for one.

        A place held by a call queued behind the run's own bound would be one that no other
        run could use (four runs of one burst went one after another).
        """
        return max(self.caller.max_concurrent - self._in_call, 0)

    def _take(
        self, wanted: list[str], release: Sequence[str] = (), room: int | None = None
    ) -> call_places.Taken:
        with self.engine.begin() as conn:
            if release:
                # Their calls ended here: a place held by one would never come free in this
                # run, and this run's own waiting calls would wait on it for ever.
                slot_status.give_back_call_places(
                    conn, list(release), dagster_run_id=self.dagster_run_id
                )
            return self._take_in(conn, wanted, room)

    def _take_in(
        self, conn: sa.Connection, wanted: list[str], room: int | None
    ) -> call_places.Taken:
        return call_places.take(
            conn,
            wanted,
            dagster_run_id=self.dagster_run_id if self._fenced else None,
            cap=self.caller.max_per_account,
            now=self.clock(),
            room=room,
        )

    def _waiting_calls(self) -> list[str]:
        """The calls waiting for a place, which the outcomes being written may let go.

        Each ended call leaves room in this run, and gives its account's place back.
        """
        return [] if self._lost else self._places.waiting()

    # -- recording -------------------------------------------------------------------------

    async def _recorder(self, report: Report) -> None:
        """Write outcomes as calls finish, up to ``flush_size`` per transaction.

        What has arrived is taken; unless that fills a transaction, the recorder waits
        ``flush_seconds`` on the run's own clock for more (a call waiting for a place gets
        one of its own account's in memory as a call ends; one of another account's waits
        for this write). No wall-clock timeout: under the simulator's virtual clock a seed
        groups its writes the same way on every replay.
        """
        done = False
        while not done:
            first = await self._results.get()
            items: list[tuple[Result, Any, int]] = []
            done = first is None or self._queued(items, first)
            if not done and len(items) < self.limits.flush_size:
                await self.sleep(self.limits.flush_seconds)
                done = self._queued(items)
            if items:
                async with self._taking:
                    wanted = self._waiting_calls()
                    over, self._places.handed_over = self._places.handed_over, []
                    written, unrecorded, handed, taken = await asyncio.to_thread(
                        self._write, items, wanted, self._room(), over
                    )
                    self._in_call += self._places.wake(taken)
                # Their calls ended: any place one still holds goes back at the next take.
                self._places.unreleased.update(unrecorded)
                report.recorded.extend(written)
                report.unrecorded.extend(unrecorded)
                report.handed_off.extend(handed)
                if written:
                    self.on_recorded(written)

    def _queued(
        self, items: list[tuple[Result, Any, int]], first: tuple[Result, Any, int] | None = None
    ) -> bool:
        """Add what is queued to ``items``, up to ``flush_size``; True once the end is seen."""
        if first is not None:
            items.append(first)
        while len(items) < self.limits.flush_size and not self._results.empty():
            item = self._results.get_nowait()
            if item is None:
                return True
            items.append(item)
        return False

    def _write(
        self,
        items: list[tuple[Result, Any, int]],
        wanted: list[str],
        room: int,
        handed_over: list[str],
    ) -> tuple[list[Recorded], list[str], list[str], call_places.Taken]:
        """Record many outcomes in one transaction; if it fails, each in its own.

        Returns what was recorded, what was left without an outcome, what was handed off,
        and the call places that the outcomes gave back and ``wanted`` took in the same
        transaction (one by one, none are taken: the waiting calls' next poll takes them).
        The places ``handed_over`` in memory by the ended calls are marked with them.
        """
        # Schedule order: every writer locks schedules in one order, so two never deadlock.
        items = sorted(items, key=lambda i: (i[1].schedule_id or "", i[1].id))
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                slot_status.give_call_places(conn, handed_over, now=now)
                done, left, gone = self._write_all(conn, items, now)
                taken = self._take_in(conn, wanted, room) if wanted else call_places.Taken()
                return done, left, gone, taken
        except Exception:  # noqa: BLE001 - retried row by row below, each failure logged
            logger.warning("recording %d outcomes at once failed; one by one", len(items))
        written: list[Recorded] = []
        unrecorded: list[str] = []
        handed: list[str] = []
        try:
            with self.engine.begin() as conn:
                slot_status.give_call_places(conn, handed_over, now=now)
        except Exception as exc:  # noqa: BLE001 - the outcomes are still written below
            # Left unmarked, these calls go on uncounted while their givers' rows, whose
            # outcomes are retried below, give their places back: at most these few over.
            logger.error("could not mark %d handed-over call places: %s", len(handed_over), exc)
        for item in items:
            try:
                with self.engine.begin() as conn:
                    done, left, gone = self._write_all(conn, [item], now)
            except Exception as exc:  # noqa: BLE001 - one slot's failure loses no other's
                logger.error("could not record slot %s: %s", item[1].id, exc)
                unrecorded.append(item[1].id)
                continue
            written.extend(done)
            unrecorded.extend(left)
            handed.extend(gone)
        return written, unrecorded, handed, call_places.Taken()

    def _write_all(
        self, conn: sa.Connection, items: list[tuple[Result, Any, int]], now: dt.datetime
    ) -> tuple[list[Recorded], list[str], list[str]]:
        written: list[Recorded] = []
        unrecorded: list[str] = []
        handed: list[str] = []
        for result, row, attempt in items:
            error = result.error
            if error is not None and error.code == HANDED_OFF and error.api_run_id is not None:
                # Still going after the hand-off: the sensor polls it from the next tick on.
                if slot_status.hand_off(conn, row.id, error.api_run_id, poll_after=now):
                    handed.append(row.id)
                continue
            if error is not None and error.api_run_id is not None:
                # Accepted, but its end is not known: the API run may still be going (and
                # spending). Keep its id for the next attempt, never record it failed.
                slot_status.keep_api_run(conn, row.id, error.api_run_id)
                unrecorded.append(row.id)
                continue
            outcome = result.outcome if result.outcome is not None else error.as_outcome()  # type: ignore[union-attr]
            recorded = record_outcome(
                conn, row.id, outcome, dagster_run_id=self.dagster_run_id, now=now
            )
            written.append(Recorded(row, outcome, recorded, attempt))
        return written, unrecorded, handed

    # -- the lease -------------------------------------------------------------------------

    async def _heartbeat(self, batch_id: str, attempt: int) -> None:
        renewed_at = self.clock()
        while True:
            await self.sleep(self.limits.heartbeat_seconds)
            try:
                renewed = await asyncio.to_thread(self._renew, batch_id, attempt)
            except Exception as exc:  # noqa: BLE001 - the heartbeat must never die silently
                # The database is away for a moment: keep trying while the lease holds. Once
                # it may have run out, the sensor may have moved the batch on: fire no more.
                if self.clock() - renewed_at >= self.limits.lease:
                    logger.warning("batch %s: lease not renewed in time: firing no more", batch_id)
                    self._lost = True
                    return
                logger.warning("batch %s: could not renew the lease (%s)", batch_id, exc)
                continue
            renewed_at = self.clock()
            if not renewed:
                logger.warning("batch %s moved past attempt %d: firing no more", batch_id, attempt)
                self._lost = True
                return

    def _renew(self, batch_id: str, attempt: int) -> bool:
        """Renew the lease.

        A slot asked to stop while its call is in flight (a pause with --terminate, overlap
        cancel_other) is not abandoned: its call goes on to the API run's end, and the
        outcome is recorded cancelled, with its usage and receipt.
        """
        with self.engine.begin() as conn:
            return batches.renew_lease(
                conn, batch_id, attempt, now=self.clock(), lease=self.limits.lease
            )


def summary(report: Report) -> str:
    """One line for the run's log."""
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(report.statuses.items())) or "none"
    return (
        f"batch {report.batch_id} attempt {report.attempt}: fired {report.fired}; "
        f"{statuses}; {len(report.unrecorded)} without an outcome yet; "
        f"{len(report.handed_off)} handed off to the sensor's polls"
    )
