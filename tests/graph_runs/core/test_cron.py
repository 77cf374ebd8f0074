"""graph_runs.core.cron: fire instants at exact UTC times, across daylight-saving changes.

Pure functions; no database, no Dagster. The shortest gap between fires, which the
minimum-interval and jitter checks use, is judged with the zone's shifts and is the same
whenever it is asked.
"""

import datetime as dt

import pytest

from graph_runs.core.cron import CronError, CronSchedule, format_utc, offset_shifts
from graph_runs.core.errors import InvalidInput
from graph_runs.core.schedule_spec import ScheduleLimits, validate_spec
from tests.helpers import at


def fires(expr: str, tz: str, start: str, end: str) -> list[str]:
    schedule = CronSchedule(expr, tz)
    return [format_utc(i) for i in schedule.fires_between(at(start), at(end), limit=1000)]


def test_fixed_time_on_fall_back_day_fires_once_at_first_occurrence() -> None:
    # 01:30 happens twice in New York on 2026-11-01: at 05:30Z (EDT) and 06:30Z (EST).
    assert fires(
        "30 1 * * *", "America/New_York", "2026-10-31T00:00:00Z", "2026-11-02T23:59:59Z"
    ) == [
        "2026-10-31T05:30:00Z",
        "2026-11-01T05:30:00Z",
        "2026-11-02T06:30:00Z",
    ]


def test_fixed_time_in_spring_forward_gap_fires_once_when_the_gap_ends() -> None:
    # 02:30 does not exist in New York on 2026-03-08; the gap ends at 03:00 EDT = 07:00Z.
    assert fires(
        "30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", "2026-03-09T23:59:59Z"
    ) == [
        "2026-03-07T07:30:00Z",
        "2026-03-08T07:00:00Z",
        "2026-03-09T06:30:00Z",
    ]


def test_wildcard_hour_follows_real_time_through_fall_back() -> None:
    # Every hour at :30 from 04:00Z to 08:00Z on the fall-back day: 01:30 happens twice.
    assert fires(
        "30 * * * *", "America/New_York", "2026-11-01T04:00:00Z", "2026-11-01T08:00:00Z"
    ) == [
        "2026-11-01T04:30:00Z",
        "2026-11-01T05:30:00Z",
        "2026-11-01T06:30:00Z",
        "2026-11-01T07:30:00Z",
    ]


def test_wildcard_hour_skips_local_times_that_never_happen() -> None:
    # 02:30 EST never happens on 2026-03-08; real time goes 01:30 EST (06:30Z), 03:30 EDT (07:30Z).
    assert fires(
        "30 * * * *", "America/New_York", "2026-03-08T06:00:00Z", "2026-03-08T08:00:00Z"
    ) == [
        "2026-03-08T06:30:00Z",
        "2026-03-08T07:30:00Z",
    ]


def test_berlin_weekday_morning_across_the_october_change() -> None:
    # Europe/Berlin leaves summer time on 2026-10-25 (a Sunday): 09:00 is 07:00Z, then 08:00Z.
    assert fires(
        "0 9 * * 1-5", "Europe/Berlin", "2026-10-23T00:00:00Z", "2026-10-27T00:00:00Z"
    ) == [
        "2026-10-23T07:00:00Z",
        "2026-10-26T08:00:00Z",
    ]


def test_fall_back_fixed_time_in_a_half_hour_zone() -> None:
    # Australia/Lord_Howe shifts by 30 minutes; 01:45 on 2026-04-05 happens at +11 (14:45Z)
    # and again at +10:30 (15:15Z); only the first fires. The next day's is at 15:15Z.
    result = fires(
        "45 1 * * *", "Australia/Lord_Howe", "2026-04-04T12:00:00Z", "2026-04-05T16:00:00Z"
    )
    assert result == ["2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"]


@pytest.mark.parametrize(
    ("expr", "tz", "fragment"),
    [
        ("* * * *", "UTC", "5-field"),
        ("61 * * * *", "UTC", "not a valid cron"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("0 0 * * *", "Mars/Olympus", "unknown IANA time zone"),
    ],
)
def test_bad_expressions_and_zones_are_refused_with_a_reason(
    expr: str, tz: str, fragment: str
) -> None:
    with pytest.raises(CronError, match=fragment):
        CronSchedule(expr, tz)


def test_is_fire_time_and_min_interval() -> None:
    schedule = CronSchedule("*/15 * * * *", "UTC")
    assert schedule.is_fire_time(at("2026-11-22T10:45:00Z"))
    assert not schedule.is_fire_time(at("2026-11-22T10:46:00Z"))
    assert schedule.min_interval(at("2026-11-22T00:00:00Z")).total_seconds() == 900


def test_schedules_of_one_expression_share_its_parse_but_not_their_position() -> None:
    # One parsed expression serves every schedule that uses it (parsing was most of a tick's
    # cron work); each iteration starts from its own instant, however they interleave.
    berlin, new_york = (
        CronSchedule("30 1 * * *", "Europe/Berlin"),
        CronSchedule("30 1 * * *", "America/New_York"),
    )
    first = new_york.next_after(at("2026-10-31T12:00:00Z"))
    assert format_utc(berlin.next_after(at("2026-03-28T12:00:00Z"))) == "2026-03-29T00:30:00Z"
    assert new_york.next_after(at("2026-10-31T12:00:00Z")) == first
    assert format_utc(first) == "2026-11-01T05:30:00Z"
    assert format_utc(new_york.next_after(first)) == "2026-11-02T06:30:00Z"
    # An expression that was refused is refused again: a refusal is never cached as valid.
    for _ in range(2):
        with pytest.raises(CronError, match="never fires"):
            CronSchedule("0 0 30 2 *", "UTC")


@pytest.mark.parametrize(
    ("expression", "zone", "shortest_minutes"),
    [
        # 02:30 does not exist on the spring-forward day: it fires at 03:00, 30 min before
        # 03:30, where every other day has an hour between the two.
        ("30 2,3 * * *", "America/New_York", 30),
        ("*/7 1-3 * * *", "America/New_York", 4),
        ("0 * * * *", "Europe/Berlin", 60),
    ],
)
def test_the_shortest_gap_counts_the_zone_shifts_and_not_the_day_it_is_asked(
    expression: str, zone: str, shortest_minutes: int
) -> None:
    schedule = CronSchedule(expression, zone)
    assert schedule.shortest_gap() == dt.timedelta(minutes=shortest_minutes)
    # The same verdict in November, when 200 fires from now stop short of the March
    # shift, as in March, when they reach it: a schedule accepted once stays accepted.
    raw = {"owner": "a", "graph_id": "g", "grant_id": "grt_1", "cron": expression}
    limits = ScheduleLimits(min_interval_seconds=3600)
    verdicts = set()
    for now in ("2026-11-22T00:00:00Z", "2027-03-05T00:00:00Z", "2027-10-30T00:00:00Z"):
        try:
            validate_spec({**raw, "timezone": zone}, limits, at(now))
            verdicts.add("accepted")
        except InvalidInput as exc:
            verdicts.add(str(exc))
    assert len(verdicts) == 1
    assert (verdicts == {"accepted"}) == (shortest_minutes >= 60)


def test_fires_within_a_window_are_the_fires_one_by_one_around_every_shift() -> None:
    for expression, zone in [
        ("*/7 1-3 * * *", "America/New_York"),
        ("15 1 * * *", "Europe/London"),
    ]:
        schedule = CronSchedule(expression, zone)
        for shift in offset_shifts(
            schedule.zone, at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z")
        ):
            start, end = shift - dt.timedelta(hours=3), shift + dt.timedelta(hours=3)
            assert schedule.fires_within(start, end) == schedule.fires_between(
                start, end, limit=999
            )
