"""The fault simulator: one seed, one world, many simulated hours, invariants all along.

``Simulation(seed, url, hours).run()`` returns the violations found (none is a pass). Every
choice comes from ``random.Random(seed)``: which user acts and how, which fault strikes
where, how the API answers. A failure names its seed, and ``python -m tests.simulation
--seed N --hours H`` replays it exactly.
"""

import asyncio
import contextvars
import datetime as dt
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from graph_runs.access.grants import Grant, GrantDenied, create_grant
from graph_runs.approvals import decisions
from graph_runs.approvals import gate as approval_gate
from graph_runs.core.errors import GraphRunsError
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.core.statuses import AWAITING_APPROVAL, IN_FLIGHT
from graph_runs.dispatch import batches, ledger, polling
from graph_runs.dispatch.dispatcher import Report
from graph_runs.dispatch.firing import Firing
from graph_runs.dispatch.reconcile import apply_run_statuses, runs_to_reconcile
from graph_runs.dispatch.started import check_started
from graph_runs.dispatch.tick import claim_and_batch
from graph_runs.jobs import slot_events
from graph_runs.money.budgets import set_budget
from graph_runs.operations import drift, drift_repair
from graph_runs.scheduling.claim import TickLimits
from graph_runs.scheduling.refire import refire_schedule
from graph_runs.scheduling.revocation import revoke_and_pause
from graph_runs.scheduling.schedules import (
    create_schedule,
    delete_schedule,
    pause_schedule,
    resume_schedule,
    update_schedule,
    upsert_schedule,
)
from graph_runs.scheduling.triggers import backfill_schedule, trigger_schedule
from graph_runs.store.db import make_engine
from graph_runs.store.tables import PENDING_APPROVAL, approvals, run_ledger, schedules
from tests.simulation import invariants
from tests.simulation.world import (
    CALLS_PER_ACCOUNT,
    EPOCH,
    Dagster,
    Faults,
    FaultyApi,
    SimRun,
    VirtualTime,
    make_caller,
    make_dispatcher,
    run_loop,
    seeded_ids,
    settle,
)

TICK = dt.timedelta(seconds=30)
LOOKAHEAD = dt.timedelta(seconds=50)
LIMITS = ScheduleLimits()
RECOVERY = batches.Recovery()
MAX_SCHEDULES = 12
# After the simulated hours: everything is paused and left to settle for at most this long
# (the longest slot timeout, 120 s, plus the 10-minute give-up margin, plus recovery).
QUIESCE = dt.timedelta(hours=1)
# Run monitoring fails a run whose process died, left STARTED, within about this long
# (dagster.postgres.yaml; Dagster's worker health check polls every 120 s).
MONITORING = (dt.timedelta(seconds=120), dt.timedelta(seconds=300))
APPROVERS = ("reviewer-1", "reviewer-2")
# The slot events sensor's cap, small so that backlogs span ticks; and how often Dagster
# loses a tick's cursor (the daemon died after the evaluation).
ANNOUNCE_PER_TICK = 20
LOST_ANNOUNCE_TICK = 0.1
_current_run: contextvars.ContextVar[SimRun | None] = contextvars.ContextVar("run", default=None)


class InjectedDatabaseError(sa.exc.OperationalError):
    """A statement the simulated database refused (a dropped connection, a failover)."""


@dataclass
class Simulation:
    """One seed's world; ``run`` drives it and returns what broke."""

    seed: int
    url: str
    hours: float = 2.0
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.time = VirtualTime(EPOCH)
        self.api = FaultyApi(self.time, random.Random(self.rng.getrandbits(64)), self.faults)
        self.dagster = Dagster()
        self.grants: list[Grant] = []
        self.cron_history: dict[str, list[tuple[dt.datetime, str]]] = {}
        self.tasks_of: dict[str, set[asyncio.Task[Any]]] = {}
        self.violations: list[str] = []
        self.history = invariants.History()
        self.counts: dict[str, int] = {}
        self.calm = False  # during checks and the final settling: no faults of ours
        self.poller: asyncio.Task[None] | None = None
        self.reconciling = False
        self.monitoring = dt.timedelta(
            seconds=self.rng.uniform(*(m.total_seconds() for m in MONITORING))
        )
        # The slot events sensor: its committed cursor, and every (row, outcome) it took.
        self.announce_rng = random.Random(self.rng.getrandbits(64))
        self.announce_cursor = 0
        self.announced: set[tuple[str, str]] = set()

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> list[str]:
        """Drive the world for ``hours``, then settle it; the violations found."""
        ids = seeded_ids(random.Random(self.rng.getrandbits(64)))
        real_uuid4, uuid.uuid4 = uuid.uuid4, ids  # type: ignore[assignment]
        self.engine = make_engine(self.url)
        sa.event.listen(self.engine, "before_cursor_execute", self._maybe_fail)
        try:
            run_loop(self._main())
        finally:
            uuid.uuid4 = real_uuid4  # type: ignore[assignment]
            sa.event.remove(self.engine, "before_cursor_execute", self._maybe_fail)
            self.engine.dispose()
        return self.violations

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(self._task_factory)
        # A task of a run that died with an error (its process would have exited with it).
        loop.set_exception_handler(lambda _loop, _context: self._count("orphan_task_error"))
        with self._calmly(), self.engine.begin() as conn:  # the world's setup: no faults
            for owner in ("alice", "bob", "carol"):
                self.grants.append(
                    create_grant(
                        conn,
                        owner=owner,
                        billing_account=f"{owner}-billing",
                        scopes=["graph:execute:*"],
                        now=self.time.now,
                    )
                )
        end = EPOCH + dt.timedelta(hours=self.hours)
        next_tick, next_act = EPOCH, EPOCH + dt.timedelta(seconds=5)
        settling_until: dt.datetime | None = None
        while True:
            await settle()
            if settling_until is None and self.time.now >= end:
                self._pause_everything()
                settling_until = self.time.now + QUIESCE
            if settling_until is not None and (self._quiet() or self.time.now >= settling_until):
                break
            starts = [
                r.starts_at
                for r in self.dagster.runs.values()
                if r.starts_at and r.task is None and r.status in ("QUEUED", "STARTING")
            ]
            wake = self.time.next_wake()
            moments = [next_tick, *([next_act] if settling_until is None else []), *starts]
            if wake is not None:
                moments.append(wake)
            self.time.now = max(self.time.now, min(moments))
            if self.time.now >= next_tick:
                if not self.calm and self.rng.random() < self.faults.clock_jump:
                    self._count("clock_jump")
                    self.time.now += dt.timedelta(seconds=self.rng.uniform(30, 900))
                # A daemon that fell behind ticks once, now, not once for each tick it missed.
                next_tick = max(next_tick + TICK, self.time.now)
                self._tick()
                self._announce()
                self._check(final=False)
            if settling_until is None and self.time.now >= next_act:
                next_act = self.time.now + dt.timedelta(seconds=self.rng.expovariate(1 / 20))
                self._act()
            self._start_runs()
            self.time.wake_due()
        for run in self.dagster.going():
            self._kill(run, "STARTED")
        await settle()
        with self._calmly():
            for _ in range(1_000):
                if not self._announce():
                    break
        self._check(final=True)

    def _quiet(self) -> bool:
        if self.dagster.going():
            return False
        with self._calmly(), self.engine.connect() as conn:
            left = conn.execute(
                sa.select(sa.func.count())
                .select_from(run_ledger)
                .where(run_ledger.c.status.in_(sorted(IN_FLIGHT | {AWAITING_APPROVAL})))
            ).scalar_one()
        return left == 0

    # -- faults ----------------------------------------------------------------------------

    def _maybe_fail(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not self.calm and self.rng.random() < self.faults.db_error:
            self._count("db_error")
            raise InjectedDatabaseError(statement, None, ConnectionError("injected"))

    def _task_factory(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        context = kwargs.pop("context", None) or contextvars.copy_context()
        task = asyncio.Task(coro, loop=loop, context=context, **kwargs)
        run = context.get(_current_run)
        if run is not None:
            self.tasks_of.setdefault(run.run_id, set()).add(task)
        return task

    def _kill(self, run: SimRun, status: str) -> None:
        """The run's process dies: every task of it stops at its next step boundary."""
        run.status = status
        run.died_at = self.time.now
        for task in self.tasks_of.get(run.run_id, set()):
            task.cancel()

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -- the sensor and Dagster ------------------------------------------------------------

    def _announce(self) -> bool:
        """One tick of the slot events sensor; whether it took anything.

        Its cursor is committed by Dagster after the tick, which can be lost (the daemon died
        between): then the next tick has the old cursor.
        """
        try:
            with self.engine.begin() as conn:
                taken = slot_events.take(conn, self.announce_cursor, ANNOUNCE_PER_TICK)
        except sa.exc.SQLAlchemyError:
            self._count("announce_tick_failed")
            return True
        self.announced.update((row.id, row.status) for row in taken.rows)
        if taken.rows and not self.calm and self.announce_rng.random() < LOST_ANNOUNCE_TICK:
            self._count("announce_tick_lost")
        elif taken.rows:
            self.announce_cursor = taken.tick
        return bool(taken.rows)

    def _tick(self) -> None:
        """One sensor tick, as graph_schedules_sensor makes it; it may die on the way."""
        now, f = self.time.now, self.faults
        for run in self.dagster.runs.values():
            if run.status == "STARTED" and run.died_at and now >= run.died_at + self.monitoring:
                run.status = "FAILURE"  # run monitoring: its worker is gone
        for run in self.dagster.going():
            if self.calm:
                break
            if self.rng.random() < f.clock_step:
                self._count("clock_step")
                run.skew = -dt.timedelta(seconds=self.rng.choice([0, 3, 45, 150]))
            draw = self.rng.random()
            if draw < f.kill_run:
                self._count("kill")
                self._kill(run, self.rng.choice(["STARTED", "FAILURE"]))
            elif draw < f.kill_run + f.freeze_run:
                self._count("freeze")
                run.frozen_until = now + dt.timedelta(seconds=self.rng.uniform(70, 400))
            elif draw < f.kill_run + f.freeze_run + f.cancel_run:
                self._count("cancel")
                self._kill(run, "CANCELED")
        try:
            self._reconcile(now)
            with self.engine.begin() as conn:
                claim_and_batch(
                    conn,
                    now=now,
                    schedule_limits=LIMITS,
                    tick_limits=TickLimits(lookahead=LOOKAHEAD),
                    batch_size=self.rng.choice([1, 5, 50]),
                    parallel_runs=self.rng.choice([1, 2]),
                    account_batches=self.rng.choice([0, 8]),
                )
            if not self.calm and self.rng.random() < f.tick_dies:
                self._count("tick_died_after_commit")
                return
            with self.engine.connect() as conn:
                open_now = batches.open_batches(conn, 2000)
            for batch in open_now:
                run = self.dagster.by_key(batch.run_key)
                if run is None:
                    self._request_batch(batch.id, batch.attempt)
                    continue
                verdict = batches.assess(
                    batch, run_id=run.run_id, run_status=run.status, now=now, limits=RECOVERY
                )
                if verdict is None:
                    continue
                with self.engine.begin() as conn:
                    moved = batches.recover(conn, batch, verdict, now=now, limits=RECOVERY)
                if moved is not None:
                    self._count(f"recovered_{moved.action}")
                if moved is not None and moved.action == "retry":
                    self._request_batch(batch.id, batch.attempt + 1)
            self._approvals_tick(now)
        except sa.exc.OperationalError:
            self._count("tick_failed")
            return
        if self.poller is None or self.poller.done():
            # Step 4, the sensor's polls of handed-off API runs: a task of no run, on the
            # simulated API; the real tick waits for it (15 s at most), this one lets the
            # world go on meanwhile, and starts none while the last is still polling.
            self.poller = asyncio.get_running_loop().create_task(self._poll(now))

    async def _poll(self, now: dt.datetime) -> None:
        try:
            polled = await polling.poll_handed_off(
                self.engine, make_caller(self.api, self.time), now=now
            )
        except sa.exc.OperationalError:
            self._count("poll_failed")
            return
        for what in ("ended", "still_going", "given_up", "failed_to_record"):
            if getattr(polled, what):
                self._count(f"polled_{what}")

    def _approvals_tick(self, now: dt.datetime) -> None:
        """The approvals sensor's tick (graph_run_approvals_sensor), on this Dagster."""
        with self.engine.begin() as conn:
            approval_gate.settle_timeouts(conn, now, 1_000)
        with self.engine.connect() as conn:
            candidates = approval_gate.to_launch(conn, 500)
        if not candidates:
            return
        found = {}
        for approval, row in candidates:
            run = self.dagster.by_key(approval.id)
            if run is not None:
                found[row.id] = run.run_id
        with self.engine.begin() as conn:
            plan = approval_gate.plan_launches(conn, candidates, found, now)
        for approval, row in plan.to_request:
            self._request(approval.id, ledger_id=row.id)

    def _reconcile(self, now: dt.datetime) -> None:
        """Step 0, as the sensor's: rows whose own Dagster run ended are settled."""
        with self.engine.connect() as conn:
            rows = runs_to_reconcile(conn, 500)
        if not rows:
            return
        by_id = {run.run_id: run.status for run in self.dagster.runs.values()}
        statuses = {
            r.dagster_run_id: by_id[r.dagster_run_id] for r in rows if r.dagster_run_id in by_id
        }
        with self.engine.begin() as conn:
            done = apply_run_statuses(conn, rows, statuses, now=now)
        if done.failed or done.cancelled:
            self._count("reconciled")
        if done.handed_off:
            self._count("reconciled_to_polls")

    def _request_batch(self, batch_id: str, attempt: int) -> None:
        """A run request with run key batch:{id}:{attempt}."""
        self._request(batches.run_key(batch_id, attempt), batch_id=batch_id, attempt=attempt)

    def _request(
        self,
        key: str,
        *,
        batch_id: str | None = None,
        attempt: int = 1,
        ledger_id: str | None = None,
    ) -> None:
        """A run request: Dagster makes one run per run key, however often asked."""
        if self.dagster.by_key(key) is not None:
            return
        slow = not self.calm and self.rng.random() < self.faults.slow_start
        delay = self.rng.uniform(60, 240) if slow else self.rng.uniform(0.5, 8)
        run = SimRun(
            run_id=f"run-{len(self.dagster.runs) + 1}",
            batch_id=batch_id,
            attempt=attempt,
            ledger_id=ledger_id,
            status="STARTING" if slow else "QUEUED",
            starts_at=self.time.now + dt.timedelta(seconds=delay),
            skew=dt.timedelta(seconds=-self.rng.choice([0, 0, 3, 45, 150])),
        )
        self.dagster.runs[key] = run

    def _start_runs(self) -> None:
        for run in list(self.dagster.runs.values()):
            if run.task is None and run.starts_at and run.starts_at <= self.time.now:
                if run.status not in ("QUEUED", "STARTING"):
                    continue
                run.status = "STARTED"
                token = _current_run.set(run)
                run.task = asyncio.get_running_loop().create_task(self._work(run))
                _current_run.reset(token)

    async def _work(self, run: SimRun) -> None:
        """The dispatch job's op: work one attempt; the run fails if slots were left."""
        dispatcher = make_dispatcher(
            self.engine, self.api, self.time, run, hand_off=self.rng.choice([0, 5, 30, 300])
        )
        try:
            if run.batch_id is not None:
                report = await dispatcher.run_batch(run.batch_id, run.attempt)
            else:
                report = await self._work_one(run, dispatcher)
        except asyncio.CancelledError:
            return  # killed: its status is what the killer left
        except Exception:  # noqa: BLE001 - a run that raises ends FAILURE, as in Dagster
            self._count("run_raised")
            run.status = "FAILURE"
            return
        finally:
            # The op has returned or raised: its process exits, and whatever it still had
            # going (a call, a heartbeat) with it.
            for task in self.tasks_of.get(run.run_id, set()):
                if task is not asyncio.current_task():
                    task.cancel()
        run.status = "FAILURE" if report.failed or report.unrecorded else "SUCCESS"

    async def _work_one(self, run: SimRun, dispatcher: Any) -> Report:
        """graph_run_job's op for an approved slot: start it, check its grant, call once."""
        assert run.ledger_id is not None
        now = self.time.now + run.skew
        with self.engine.begin() as conn:
            row = ledger.start_run(conn, run.ledger_id, dagster_run_id=run.run_id, now=now)
            checked = check_started(conn, row, dagster_run_id=run.run_id, now=now)
        if isinstance(checked, GrantDenied):
            raise checked  # recorded failed; the op raises dg.Failure, and its run fails
        if checked is None:
            return Report()
        return await dispatcher.run_started([Firing(row, checked)])

    # -- users -----------------------------------------------------------------------------

    def _act(self) -> None:
        """One user action through the Python API, in its own transaction."""
        now, rng = self.time.now, self.rng
        with self._calmly(), self.engine.connect() as conn:
            live = list(
                conn.execute(
                    sa.select(schedules.c.id, schedules.c.cron, schedules.c.grant_id).where(
                        schedules.c.status != "deleted"
                    )
                )
            )
        action = rng.choices(
            ["create", "upsert", "pause", "resume", "edit", "retime", "delete", "trigger",
             "backfill", "refire", "budget", "revoke", "approve", "reject", "reconcile"],
            weights=[6 if len(live) < MAX_SCHEDULES else 0, 1.5, 3, 4, 2, 2, 1, 2, 1, 1, 1,
                     0.2, 4, 1.5, 0.7],
        )[0]  # fmt: skip
        if action == "reconcile":
            self._reconcile_fix(now)
            return
        if action not in ("create", "upsert", "budget") and not live:
            return
        target = rng.choice(live) if live else None
        try:
            with self.engine.begin() as conn:
                self._do(conn, action, target, now)
            self._count(action)
        except (GraphRunsError, sa.exc.OperationalError):
            self._count(f"{action}_refused")

    def _do(self, conn: sa.Connection, action: str, target: Any, now: dt.datetime) -> None:
        rng = self.rng
        if action == "create":
            grant = rng.choice([g for g in self.grants if g.revoked_at is None] or self.grants)
            cron = rng.choice(["* * * * *", "*/2 * * * *"])
            view = create_schedule(
                conn,
                {
                    "owner": grant.owner,
                    "graph_id": "sleep",
                    "input": {"seconds": rng.choice([0, 1, 5, 30, 90, 150])},
                    "cron": cron,
                    "timezone": "UTC",
                    "grant_id": grant.id,
                    "overlap": rng.choice(["skip", "buffer_one", "allow_all", "cancel_other"]),
                    "timeout_seconds": rng.choice([60, 120]),
                    "jitter_seconds": rng.choice([0, 0, 7]),
                    "max_runs": rng.choice([None, None, 3]),
                    "requires_approval": rng.random() < 0.25,
                    "approval_timeout_seconds": rng.choice([60, 300]),
                    "on_approval_timeout": rng.choice(["skip", "approve"]),
                },
                limits=LIMITS,
                now=now,
            )
            self.cron_history[view["id"]] = [(now, cron)]
        elif action == "upsert":
            # An app syncing its state: the whole spec under one of a few external ids, which
            # creates, changes (its timing and input among them) or leaves a schedule alone.
            grant = rng.choice([g for g in self.grants if g.revoked_at is None] or self.grants)
            cron = rng.choice(["* * * * *", "*/2 * * * *"])
            view, _outcome = upsert_schedule(
                conn,
                {
                    "owner": grant.owner,
                    "external_id": f"app-{rng.randrange(3)}",
                    "graph_id": "sleep",
                    "input": {"seconds": rng.choice([0, 5, 30])},
                    "cron": cron,
                    "timezone": "UTC",
                    "grant_id": grant.id,
                    "overlap": rng.choice(["skip", "allow_all"]),
                    "timeout_seconds": 60,
                },
                limits=LIMITS,
                now=now,
            )
            self.cron_history.setdefault(view["id"], []).append((now, cron))
        elif action == "pause":
            pause_schedule(conn, target.id, now=now, note="sim", terminate=rng.random() < 0.3)
        elif action == "resume":
            resume_schedule(conn, target.id, now=now, limits=LIMITS)
        elif action == "edit":
            changes = {"input": {"seconds": rng.choice([0, 1, 5, 30])}}
            update_schedule(conn, target.id, changes, limits=LIMITS, now=now)
        elif action == "retime":
            cron = "*/2 * * * *" if target.cron == "* * * * *" else "* * * * *"
            update_schedule(conn, target.id, {"cron": cron}, limits=LIMITS, now=now)
            self.cron_history.setdefault(target.id, []).append((now, cron))
        elif action == "delete":
            delete_schedule(conn, target.id, now=now, terminate=rng.random() < 0.5)
        elif action == "trigger":
            trigger_schedule(conn, target.id, now=now, request_key=f"k{rng.randrange(5)}")
        elif action == "backfill":
            start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=rng.randrange(2, 8))
            backfill_schedule(conn, target.id, start=start, end=now, now=now, limits=LIMITS)
        elif action == "refire":
            # Failed slots are few: a wide range finds some.
            start = now.replace(second=0, microsecond=0) - dt.timedelta(
                minutes=rng.randrange(2, 90)
            )
            overlap = rng.choice(["allow_all", "skip"])
            report = refire_schedule(
                conn, target.id, start=start, end=now, now=now, overlap=overlap
            )
            if report["refired"]:
                self.counts["refired_slot"] = self.counts.get("refired_slot", 0) + report["refired"]
        elif action == "budget":
            grant = rng.choice(self.grants)
            limit = Decimal(rng.choice(["0", "1000"]))
            set_budget(
                conn, billing_account=grant.billing_account, period="month", limit_usd=limit,
                now=now,
            )  # fmt: skip
        elif action in ("approve", "reject"):
            pending = conn.execute(
                sa.select(approvals.c.id).where(PENDING_APPROVAL).order_by(approvals.c.id)
            ).scalars()
            choices = list(pending)
            if choices:
                decide = decisions.approve if action == "approve" else decisions.reject
                decide(conn, rng.choice(choices), by=rng.choice(APPROVERS), now=now)
        elif action == "revoke":
            grant = rng.choice(self.grants)
            revoked, _paused = revoke_and_pause(conn, grant.id, now=now, by="sim")
            self.grants = [revoked if g.id == grant.id else g for g in self.grants]

    def _reconcile_fix(self, now: dt.datetime) -> None:
        """``graph-runs reconcile --fix``, now and then against an empty instance (B2).

        Between its finding and its fixing, a user may act: the repair must see it.
        """
        wrong = self.rng.random() < 0.2
        runs = [] if wrong else list(self.dagster.runs.values())

        def facts(in_flight: list[str], recent: list[str]) -> drift.DagsterFacts:
            statuses = {r.run_id: r.status for r in runs}
            looked = {i: statuses[i] for i in {*in_flight, *recent} if i in statuses}
            return drift.DagsterFacts(
                partitions=frozenset() if wrong else frozenset(self.cron_history),
                statuses=looked,
                looked_up=frozenset(in_flight),
                trusted=drift.knows_recent(looked, recent),
                runs=[
                    drift.RunFacts(
                        run_id=r.run_id,
                        job_name="dispatch_batch_job" if r.batch_id else "graph_run_job",
                        status=r.status,
                        ledger_id=r.ledger_id,
                        batch_id=r.batch_id,
                    )
                    for r in runs
                ],
            )

        try:
            findings, found = drift_repair.find_and_repair(
                self.engine, facts, now=now, limits=LIMITS, fix=False
            )
            if self.rng.random() < 0.5 and not self.reconciling:
                self.reconciling = True
                try:
                    self._act()
                finally:
                    self.reconciling = False
            drift_repair.repair(self.engine, findings, now=now, limits=LIMITS, dagster=found)
        except sa.exc.OperationalError:
            self._count("reconcile_refused")
            return
        self._count("reconcile_wrong_instance" if wrong else "reconcile")
        for finding in findings:
            if finding.repaired:
                self._count(f"repaired_{finding.kind}")

    def _pause_everything(self) -> None:
        """The end of the simulated hours: every schedule paused, its runs left to settle."""
        self.calm = True
        self.api.faults = Faults.none()
        with self.engine.begin() as conn:
            live = sa.select(schedules.c.id).where(schedules.c.status != "deleted")
            for schedule_id in conn.execute(live).scalars().all():
                pause_schedule(conn, schedule_id, now=self.time.now, note="end of simulation")

    # -- checks ----------------------------------------------------------------------------

    @contextmanager
    def _calmly(self) -> Iterator[None]:
        """The simulator's own reads: no fault strikes them."""
        calm, self.calm = self.calm, True
        try:
            yield
        finally:
            self.calm = calm

    def _check(self, *, final: bool) -> None:
        with self._calmly(), self.engine.connect() as conn:
            found = invariants.money(conn, self.api, final=final)
            found += invariants.counters(conn)
            found += invariants.places(conn, CALLS_PER_ACCOUNT)
            found += invariants.attempts(conn, self.history)
            found += invariants.buffering(conn, self.history, self.time.now)
            found += invariants.timing(conn, self.api, self.cron_history, self.time.now)
            found += invariants.approvals(conn, self.api, final=final)
            if final:
                found += invariants.announced(conn, self.announced)
        for line in found:
            entry = f"at {self.time.now.isoformat()}: {line}"
            if entry.split(": ", 1)[1] not in {v.split(": ", 1)[1] for v in self.violations}:
                self.violations.append(entry)
