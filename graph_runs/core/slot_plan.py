"""Which of a schedule's slots fire: catch-up, overlap, bounds and jitter, as a pure function.

``plan_slots`` sees one schedule at one instant and decides, for every slot that has come
due since its cursor, the ledger status it gets. It reads no database and no clock, so every
policy is tested at exact instants. Every slot the cron expression produced gets a status:
nothing is dropped silently.
"""

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

from graph_runs.core.cron import CronSchedule, format_utc
from graph_runs.core.policies import Policies, format_duration
from graph_runs.core.statuses import (
    BUFFERED,
    CANCELLED,
    FIRING,
    MISSED,
    PENDING,
    SKIPPED_BUDGET,
    SKIPPED_OVERLAP,
    SKIPPED_PAUSED,
)


@dataclass(frozen=True)
class PlannedSlot:
    """One slot and the status it enters the ledger with."""

    slot: dt.datetime
    due: dt.datetime
    status: str
    reason: str | None = None


@dataclass
class Plan:
    """What a tick does with one schedule."""

    slots: list[PlannedSlot] = field(default_factory=list)
    # The latest slot given a status; the next plan starts strictly after it.
    cursor: dt.datetime | None = None
    next_run_at: dt.datetime | None = None
    completed: bool = False
    # cancel_other: the runs in flight before this tick are to be cancelled.
    cancel_in_flight: bool = False

    @property
    def fired(self) -> list[PlannedSlot]:
        """The slots that fire (now or when the running run ends)."""
        return [s for s in self.slots if s.status in FIRING]


@dataclass(frozen=True)
class ScheduleState:
    """What the planner needs to know of a schedule beyond its spec."""

    schedule_id: str
    policies: Policies
    # Slots strictly after this instant have no ledger row yet; None for a one-time
    # schedule whose slot has none yet.
    cursor: dt.datetime | None
    runs_so_far: int = 0
    in_flight: int = 0
    buffered: int = 0
    # Why the schedule's billing account may not spend now (its budget is reached), if so.
    budget_block: str | None = None


def _lateness(now: dt.datetime, due: dt.datetime) -> int:
    return int((now - due).total_seconds())


def plan_slots(
    cron: CronSchedule | None,
    run_at: dt.datetime | None,
    state: ScheduleState,
    *,
    now: dt.datetime,
    on_time_grace: dt.timedelta,
    max_slots: int,
    horizon: dt.datetime | None = None,
) -> Plan:
    """Decide every due slot's status and where the schedule goes next.

    ``on_time_grace`` is how late a slot may be seen and still count as on time under
    catch-up ``none``: one sensor interval plus a tolerance for a slow tick.

    Slots that come due after ``now`` but by ``horizon`` are claimed ahead, so that their
    dispatch run is up before their instant. They enter ``pending`` with nothing decided:
    overlap and budget are decided when they come due (``graph_runs.dispatch.firing``), since the
    run before them may end, or the budget change, in between.
    """
    policies = state.policies
    until = now if horizon is None or horizon < now else horizon
    due_slots, next_slot, truncated, exhausted = _due_slots(cron, run_at, state, until, max_slots)
    plan = Plan(cursor=due_slots[-1][0] if due_slots else state.cursor)
    window = on_time_grace if policies.catchup == "none" else policies.catchup_window
    remaining = None if policies.max_runs is None else policies.max_runs - state.runs_so_far
    busy = state.in_flight > 0
    buffered = state.buffered
    # Catch-up 'latest' keeps the latest slot due by now; slots claimed ahead are not late.
    last_index = sum(due <= now for _, due in due_slots) - 1
    for index, (slot, due) in enumerate(due_slots):
        if remaining is not None and remaining <= 0:
            # The schedule ended with its last allowed run; later slots are not its slots.
            plan.cursor = due_slots[index - 1][0] if index else state.cursor
            exhausted = True
            break
        if due > now:
            plan.slots.append(PlannedSlot(slot, due, PENDING))
            if remaining is not None:
                remaining -= 1
            continue
        late = now - due
        if late > window:
            plan.slots.append(PlannedSlot(slot, due, MISSED, _missed_reason(policies, late, due)))
            continue
        if policies.catchup == "latest" and (index < last_index or truncated):
            latest = format_utc(due_slots[last_index][0])
            plan.slots.append(
                PlannedSlot(
                    slot,
                    due,
                    MISSED,
                    f"due at {format_utc(due)}, seen {_lateness(now, due)} s late; catch-up "
                    f"'latest' fires only the most recent missed slot ({latest})",
                )
            )
            continue
        if state.budget_block is not None:
            plan.slots.append(PlannedSlot(slot, due, SKIPPED_BUDGET, state.budget_block))
            continue
        status, reason = overlap_status(policies.overlap, busy, buffered)
        if policies.overlap == "cancel_other":
            if busy and not plan.fired:
                plan.cancel_in_flight = True
            # A slot of this same tick that a later one supersedes never starts.
            superseded = sum(s.status == PENDING for s in plan.slots)
            if remaining is not None:
                remaining += superseded
            plan.slots = [
                PlannedSlot(
                    s.slot,
                    s.due,
                    CANCELLED,
                    f"superseded by the slot at {format_utc(slot)} (overlap cancel_other)",
                )
                if s.status == PENDING
                else s
                for s in plan.slots
            ]
        plan.slots.append(PlannedSlot(slot, due, status, reason))
        if status in FIRING:
            busy = True
            buffered += status == BUFFERED
            if remaining is not None:
                remaining -= 1
    if exhausted or (remaining is not None and remaining <= 0):
        plan.completed = True
        plan.next_run_at = None
    elif truncated:
        # More slots are due than one tick takes: come back next tick.
        plan.next_run_at = due_slots[-1][1]
    elif next_slot is not None:
        plan.next_run_at = policies.due_at(state.schedule_id, next_slot)
    else:
        plan.completed = True
    return plan


def _due_slots(
    cron: CronSchedule | None,
    run_at: dt.datetime | None,
    state: ScheduleState,
    now: dt.datetime,
    max_slots: int,
) -> tuple[list[tuple[dt.datetime, dt.datetime]], dt.datetime | None, bool, bool]:
    """Slots after the cursor that are due at ``now``, oldest first.

    Returns them with the first slot not yet due, whether ``max_slots`` cut the list short,
    and whether the schedule has no slot left at all (past its end, or a one-time schedule
    whose slot is given).
    """
    policies = state.policies
    if cron is None:
        assert run_at is not None
        if state.cursor is not None and run_at <= state.cursor:
            return [], None, False, True
        due = policies.due_at(state.schedule_id, run_at)
        if due > now:
            return [], run_at, False, False
        return [(run_at, due)], None, False, True
    assert state.cursor is not None, "a cron schedule always has a cursor"
    out: list[tuple[dt.datetime, dt.datetime]] = []
    for slot in slots_after(cron, policies, state.cursor):
        due = policies.due_at(state.schedule_id, slot)
        if due > now:
            return out, slot, False, False
        if len(out) >= max_slots:
            return out, slot, True, False
        out.append((slot, due))
    return out, None, False, True  # past end_at


def slots_after(
    cron: CronSchedule, policies: Policies, cursor: dt.datetime
) -> Iterator[dt.datetime]:
    """The cron expression's slots strictly after ``cursor`` within start_at and end_at."""
    lower = cursor
    if policies.start_at is not None and policies.start_at - dt.timedelta(microseconds=1) > lower:
        lower = policies.start_at - dt.timedelta(microseconds=1)
    for slot in cron.fires_after(lower):
        if policies.end_at is not None and slot > policies.end_at:
            return
        yield slot


def _missed_reason(policies: Policies, late: dt.timedelta, due: dt.datetime) -> str:
    seconds = int(late.total_seconds())
    if policies.catchup == "none":
        return (
            f"due at {format_utc(due)}, seen {seconds} s late; catch-up 'none' fires only "
            "slots seen on time"
        )
    window = format_duration(int(policies.catchup_window.total_seconds()))
    return f"due at {format_utc(due)}, seen {seconds} s late, beyond the {window} catch-up window"


def overlap_status(policy: str, busy: bool, buffered: int) -> tuple[str, str | None]:
    """The status a new run gets under ``policy`` while ``busy`` (a run is in flight)."""
    if not busy or policy in ("allow_all", "cancel_other"):
        return PENDING, None
    if policy == "buffer_one" and buffered == 0:
        return BUFFERED, None
    why = "one slot is already buffered" if policy == "buffer_one" else "overlap 'skip'"
    return SKIPPED_OVERLAP, f"the previous run was still going ({why})"


def paused_slots(
    cron: CronSchedule | None,
    run_at: dt.datetime | None,
    state: ScheduleState,
    *,
    now: dt.datetime,
    limit: int,
) -> tuple[list[PlannedSlot], bool]:
    """The slots that came due while a schedule was paused, for the ledger on resume.

    Returns at most ``limit`` of them (oldest first) and whether there were more.
    """
    due, _next, truncated, _ = _due_slots(cron, run_at, state, now, limit)
    return [
        PlannedSlot(slot, when, SKIPPED_PAUSED, "came due while the schedule was paused")
        for slot, when in due
    ], truncated
