"""graph_runs.core.slot_plan: every policy decided at exact instants, without a database.

Catch-up (none, latest, all, window), overlap (skip, buffer_one, allow_all, cancel_other),
bounds (start, end, max runs), one-time schedules and jitter, including a day of downtime,
overlapping long runs, and the fall-back and spring-forward days.
"""

import datetime as dt
from typing import Any

import pytest

from graph_runs.core.cron import CronSchedule, format_utc
from graph_runs.core.policies import Policies, jitter_offset, parse_duration
from graph_runs.core.slot_plan import Plan, ScheduleState, plan_slots
from tests.helpers import at

GRACE = dt.timedelta(seconds=45)


def plan(
    cron: str | None,
    cursor: str,
    now: str,
    *,
    timezone: str = "UTC",
    run_at: str | None = None,
    max_slots: int = 500,
    in_flight: int = 0,
    buffered: int = 0,
    runs_so_far: int = 0,
    **policies: Any,
) -> Plan:
    return plan_slots(
        None if cron is None else CronSchedule(cron, timezone),
        None if run_at is None else at(run_at),
        ScheduleState(
            "sch_test",
            Policies(**policies),
            cursor=at(cursor),
            runs_so_far=runs_so_far,
            in_flight=in_flight,
            buffered=buffered,
        ),
        now=at(now),
        on_time_grace=GRACE,
        max_slots=max_slots,
    )


def statuses(result: Plan) -> list[tuple[str, str]]:
    return [(format_utc(s.slot), s.status) for s in result.slots]


DAY = dt.timedelta(days=1)
HOURLY_DOWN_A_DAY = ("0 * * * *", "2026-11-22T10:00:30Z", "2026-11-23T10:20:00Z")


def test_catchup_latest_after_a_day_of_downtime_fires_the_last_slot_only() -> None:
    result = plan(*HOURLY_DOWN_A_DAY)
    got = statuses(result)
    assert len(got) == 24
    assert got[:-1] == [(s, "missed") for s, _ in got[:-1]]
    assert got[-1] == ("2026-11-23T10:00:00Z", "pending")
    assert "beyond the 1h catch-up window" in (result.slots[0].reason or "")
    wide = plan(*HOURLY_DOWN_A_DAY, catchup_window=DAY)
    assert [s for _, s in statuses(wide)] == ["missed"] * 23 + ["pending"]
    assert "catch-up 'latest' fires only the most recent" in (wide.slots[0].reason or "")
    assert result.next_run_at == at("2026-11-23T11:00:00Z")
    assert result.cursor == at("2026-11-23T10:00:00Z")


def test_catchup_all_after_a_day_of_downtime_fires_every_slot_in_the_window() -> None:
    window = parse_duration("catchup_window", "12h")
    result = plan(*HOURLY_DOWN_A_DAY, catchup="all", catchup_window=window, overlap="allow_all")
    got = statuses(result)
    # 22:00 was seen 12 h 20 min late, beyond the window; 23:00 onwards fire, oldest first.
    assert got[:12] == [(s, "missed") for s, _ in got[:12]]
    assert got[11][0] == "2026-11-22T22:00:00Z"
    assert got[12:] == [(s, "pending") for s, _ in got[12:]]
    assert got[12][0] == "2026-11-22T23:00:00Z" and len(got) == 24
    assert "beyond the 12h catch-up window" in (result.slots[0].reason or "")


def test_catchup_all_is_subject_to_the_overlap_policy() -> None:
    skip = plan(*HOURLY_DOWN_A_DAY, catchup="all", catchup_window=DAY)
    assert [s for _, s in statuses(skip)].count("pending") == 1
    assert [s for _, s in statuses(skip)].count("skipped_overlap") == 23
    buffer = plan(*HOURLY_DOWN_A_DAY, catchup="all", catchup_window=DAY, overlap="buffer_one")
    assert [s for _, s in statuses(buffer)][:3] == ["pending", "buffered", "skipped_overlap"]


def test_catchup_none_fires_only_a_slot_seen_within_the_grace() -> None:
    on_time = plan("0 * * * *", "2026-11-22T09:00:00Z", "2026-11-22T10:00:44Z", catchup="none")
    assert statuses(on_time) == [("2026-11-22T10:00:00Z", "pending")]
    late = plan("0 * * * *", "2026-11-22T09:00:00Z", "2026-11-22T10:00:46Z", catchup="none")
    assert statuses(late) == [("2026-11-22T10:00:00Z", "missed")]
    assert "catch-up 'none' fires only slots seen on time" in (late.slots[0].reason or "")
    assert late.next_run_at == at("2026-11-22T11:00:00Z")


def test_the_window_bounds_even_the_latest_slot() -> None:
    result = plan("0 9 * * *", "2026-11-22T10:00:00Z", "2026-11-23T10:00:01Z")
    assert statuses(result) == [("2026-11-23T09:00:00Z", "missed")]
    inside = plan(
        "0 9 * * *",
        "2026-11-22T10:00:00Z",
        "2026-11-23T10:00:01Z",
        catchup_window=parse_duration("w", "2h"),
    )
    assert statuses(inside) == [("2026-11-23T09:00:00Z", "pending")]


@pytest.mark.parametrize(
    ("overlap", "expected"),
    [
        ("skip", "skipped_overlap"),
        ("buffer_one", "buffered"),
        ("allow_all", "pending"),
        ("cancel_other", "pending"),
    ],
)
def test_a_slot_due_while_a_long_run_is_going(overlap: str, expected: str) -> None:
    result = plan(
        "*/5 * * * *", "2026-11-22T10:00:00Z", "2026-11-22T10:05:02Z", in_flight=1, overlap=overlap
    )
    assert statuses(result) == [("2026-11-22T10:05:00Z", expected)]
    assert result.cancel_in_flight is (overlap == "cancel_other")


def test_buffer_one_keeps_one_slot_waiting_and_skips_the_next() -> None:
    result = plan(
        "*/5 * * * *",
        "2026-11-22T10:00:00Z",
        "2026-11-22T10:05:02Z",
        in_flight=1,
        buffered=1,
        overlap="buffer_one",
    )
    assert statuses(result) == [("2026-11-22T10:05:00Z", "skipped_overlap")]
    assert "already buffered" in (result.slots[0].reason or "")


def test_cancel_other_in_one_tick_lets_only_the_newest_slot_start() -> None:
    result = plan(
        "*/5 * * * *",
        "2026-11-22T10:00:00Z",
        "2026-11-22T10:15:02Z",
        catchup="all",
        overlap="cancel_other",
    )
    assert statuses(result) == [
        ("2026-11-22T10:05:00Z", "cancelled"),
        ("2026-11-22T10:10:00Z", "cancelled"),
        ("2026-11-22T10:15:00Z", "pending"),
    ]
    assert not result.cancel_in_flight


def test_start_at_and_end_at_bound_the_slots_and_end_completes() -> None:
    result = plan(
        "0 * * * *",
        "2026-11-22T00:00:00Z",
        "2026-11-22T12:00:05Z",
        catchup="all",
        catchup_window=DAY,
        overlap="allow_all",
        start_at=at("2026-11-22T09:00:00Z"),
        end_at=at("2026-11-22T11:30:00Z"),
    )
    assert statuses(result) == [
        ("2026-11-22T09:00:00Z", "pending"),
        ("2026-11-22T10:00:00Z", "pending"),
        ("2026-11-22T11:00:00Z", "pending"),
    ]
    assert result.completed and result.next_run_at is None


def test_end_at_completes_as_soon_as_no_slot_is_left() -> None:
    result = plan(
        "0 * * * *",
        "2026-11-22T09:30:00Z",
        "2026-11-22T10:00:05Z",
        end_at=at("2026-11-22T10:30:00Z"),
    )
    assert statuses(result) == [("2026-11-22T10:00:00Z", "pending")]
    assert result.completed


def test_max_runs_counts_fired_slots_only() -> None:
    result = plan(
        "*/5 * * * *",
        "2026-11-22T10:00:00Z",
        "2026-11-22T10:20:01Z",
        catchup="all",
        in_flight=1,
        runs_so_far=1,
        max_runs=3,
        overlap="buffer_one",
    )
    # 10:05 buffered (a run), 10:10 skipped (not a run), 10:15 skipped, 10:20 skipped:
    # one more run allowed and not used, so the schedule goes on.
    assert [s for _, s in statuses(result)] == ["buffered"] + ["skipped_overlap"] * 3
    assert not result.completed
    done = plan(
        "*/5 * * * *",
        "2026-11-22T10:00:00Z",
        "2026-11-22T10:20:01Z",
        catchup="all",
        runs_so_far=1,
        max_runs=3,
        overlap="allow_all",
    )
    assert statuses(done) == [
        ("2026-11-22T10:05:00Z", "pending"),
        ("2026-11-22T10:10:00Z", "pending"),
    ]
    assert done.completed and done.next_run_at is None
    assert done.cursor == at("2026-11-22T10:10:00Z")


def test_one_time_schedule_missed_while_down_follows_catchup() -> None:
    kwargs: dict[str, Any] = {"run_at": "2026-11-22T09:00:00Z"}
    fires = plan(None, "2000-01-01T00:00:00Z", "2026-11-22T09:40:00Z", **kwargs)
    assert statuses(fires) == [("2026-11-22T09:00:00Z", "pending")] and fires.completed
    missed = plan(None, "2000-01-01T00:00:00Z", "2026-11-22T10:40:00Z", **kwargs)
    assert statuses(missed) == [("2026-11-22T09:00:00Z", "missed")] and missed.completed
    none = plan(None, "2000-01-01T00:00:00Z", "2026-11-22T09:40:00Z", catchup="none", **kwargs)
    assert statuses(none) == [("2026-11-22T09:00:00Z", "missed")]
    waiting = plan(None, "2000-01-01T00:00:00Z", "2026-11-22T08:59:59Z", **kwargs)
    assert waiting.slots == [] and waiting.next_run_at == at("2026-11-22T09:00:00Z")


def test_fall_back_day_fires_a_fixed_time_once_and_hourly_twice() -> None:
    fixed = plan(
        "30 1 * * *",
        "2026-10-31T12:00:00Z",
        "2026-11-01T07:00:00Z",
        timezone="America/New_York",
        catchup="all",
        catchup_window=DAY,
        overlap="allow_all",
    )
    assert statuses(fixed) == [("2026-11-01T05:30:00Z", "pending")]
    hourly = plan(
        "30 * * * *",
        "2026-11-01T04:00:00Z",
        "2026-11-01T07:00:00Z",
        timezone="America/New_York",
        catchup="all",
        catchup_window=DAY,
        overlap="allow_all",
    )
    # 01:30 EDT and 01:30 EST are both real instants an hour apart.
    assert [s for s, _ in statuses(hourly)] == [
        "2026-11-01T04:30:00Z",
        "2026-11-01T05:30:00Z",
        "2026-11-01T06:30:00Z",
    ]


def test_spring_forward_day_fires_a_missing_time_when_the_gap_ends() -> None:
    result = plan(
        "30 2 * * *",
        "2026-03-07T08:00:00Z",
        "2026-03-08T07:00:01Z",
        timezone="America/New_York",
    )
    assert statuses(result) == [("2026-03-08T07:00:00Z", "pending")]
    assert result.next_run_at == at("2026-03-09T06:30:00Z")


def test_jitter_is_fixed_per_slot_within_bounds_and_delays_the_due_time() -> None:
    slot = at("2026-11-22T09:00:00Z")
    offsets = {jitter_offset("sch_a", slot, 300) for _ in range(3)}
    assert len(offsets) == 1
    spread = {jitter_offset(f"sch_{i}", slot, 300).total_seconds() for i in range(200)}
    assert min(spread) >= 0 and max(spread) < 300 and len(spread) > 100
    offset = jitter_offset("sch_test", slot, 600)
    before = plan(
        "0 9 * * *",
        "2026-11-22T08:00:00Z",
        format_utc(slot + offset - dt.timedelta(seconds=1)),
        jitter_seconds=600,
    )
    assert before.slots == [] and before.next_run_at == slot + offset
    after = plan("0 9 * * *", "2026-11-22T08:00:00Z", format_utc(slot + offset), jitter_seconds=600)
    assert [(s.slot, s.due, s.status) for s in after.slots] == [(slot, slot + offset, "pending")]


def test_a_long_backlog_is_cut_per_tick_and_resumed_from_the_cursor() -> None:
    first = plan("* * * * *", "2026-11-22T10:00:00Z", "2026-11-22T10:30:10Z", max_slots=10)
    assert [s for _, s in statuses(first)] == ["missed"] * 10
    assert first.cursor == at("2026-11-22T10:10:00Z")
    assert first.next_run_at is not None and first.next_run_at <= at("2026-11-22T10:30:10Z")
