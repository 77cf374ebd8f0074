"""Cron expressions in IANA time zones, with classic cron's daylight-saving rules.

croniter alone fires a fixed local time twice on a fall-back day. graph-runs follows Vixie
cron instead:

* a fixed local time that does not exist (spring forward) fires once, when the gap ends;
* a fixed local time that occurs twice (fall back) fires once, at its first occurrence;
* an expression whose hour field is a wildcard (``*`` or ``*/N``) follows real time: it
  fires at every occurrence of a repeated local time and skips local times that never
  happen.

The cron maths runs on naive local wall-clock times; each candidate is then resolved to the
UTC instants it stands for under the rules above.
"""

import copy
import datetime as dt
import functools
import re
from collections.abc import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

UTC = dt.UTC
# Daylight-saving shifts are at most two hours; looking three hours either side of a
# candidate finds every occurrence that could sort before it.
_DST_SLACK = dt.timedelta(hours=3)
_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")


@functools.lru_cache(maxsize=4096)
def _is_valid(expression: str) -> bool:
    return bool(croniter.is_valid(expression))


@functools.lru_cache(maxsize=4096)
def _template(expression: str) -> croniter:
    """A parsed expression; copies of it iterate (parsing is most of a tick's cron work)."""
    return croniter(expression, dt.datetime(2000, 1, 1))


def _iterate_from(expression: str, start: dt.datetime) -> croniter:
    """The expression's fire times after the naive ``start``, as ``croniter(expr, start)``."""
    candidates = copy.copy(_template(expression))
    candidates.set_current(start, force=True)
    return candidates


@functools.lru_cache(maxsize=4096)
def cron_schedule(expression: str, timezone: str = "UTC") -> "CronSchedule":
    """A shared, immutable ``CronSchedule`` for ``expression`` in ``timezone``.

    A tick revalidates thousands of rows that use a handful of expressions, and parsing is
    most of their cost.
    """
    return CronSchedule(expression, timezone)


@functools.lru_cache(maxsize=16_384)
def _next_fire(expression: str, timezone: str, after: dt.datetime) -> dt.datetime:
    # Thousands of schedules due at one instant share an expression and a cursor, so they
    # ask the same question; the answer is a pure function of the three.
    return cron_schedule(expression, timezone)._first_after(after)


# The window whose offset shifts ``shortest_gap`` examines: two years of today's rules.
_REFERENCE_START = dt.datetime(2026, 1, 1, tzinfo=UTC)
_REFERENCE_END = dt.datetime(2028, 1, 1, tzinfo=UTC)


def offset_shifts(zone: ZoneInfo, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The instants in ``[start, end)`` at which ``zone``'s UTC offset changes, to the second.

    Read day by day, then bisected: zoneinfo does not list its transitions, and no zone
    shifts twice in a day.
    """
    shifts = []
    day = dt.timedelta(days=1)
    at = start
    while at < end:
        if at.astimezone(zone).utcoffset() != (at + day).astimezone(zone).utcoffset():
            low, high = at, at + day
            while high - low > dt.timedelta(seconds=1):
                mid = low + (high - low) / 2
                if mid.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = mid
                else:
                    high = mid
            shifts.append(high)
        at += day
    return shifts


class CronError(ValueError):
    """A cron expression or time zone graph-runs cannot use."""


# IANA names: letters, digits and ``_+-`` in at most three ``/``-separated parts.
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+-]{1,30}(/[A-Za-z0-9_+-]{1,30}){0,2}$")


def parse_timezone(name: str) -> ZoneInfo:
    """Return the IANA zone ``name`` or raise CronError.

    The name is checked before the zone database is opened: a folder of it (``America``)
    or an over-long name raises OSError there, which is no answer about a time zone.
    """
    if not isinstance(name, str) or not _ZONE_NAME.match(name):
        raise CronError(f"unknown IANA time zone {name!r:.60}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(f"unknown IANA time zone {name!r}") from None


def format_utc(instant: dt.datetime) -> str:
    """Format an aware instant as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_utc_or_none(instant: dt.datetime | None) -> str | None:
    """``format_utc`` for a column that may be empty: views print NULL as null."""
    return None if instant is None else format_utc(instant)


def parse_instant(text: str) -> dt.datetime:
    """Parse an ISO 8601 instant; a value without an offset is taken as UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        # Year 1 at +05:00, or year 9999 at -05:00: no date holds it in UTC (issue 21, B8).
        raise ValueError(f"{text!r} is outside the years 1 to 9999 in UTC") from None


class CronSchedule:
    """A 5-field cron expression evaluated in one time zone."""

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        """Validate ``expression`` and ``timezone``; raise CronError naming what is wrong."""
        fields = expression.split()
        if len(fields) != 5 or not all(_FIELD.match(f) for f in fields):
            raise CronError(
                f"{expression!r} is not a 5-field cron expression (minute hour day month weekday)"
            )
        if not _is_valid(expression):
            raise CronError(f"{expression!r} is not a valid cron expression")
        self.expression = " ".join(fields)
        self.timezone = timezone
        self.zone = parse_timezone(timezone)
        self.hour_is_wildcard = fields[1].startswith("*")
        try:
            self._first_after(dt.datetime(2000, 1, 1, tzinfo=UTC))
        except CronError:
            raise CronError(f"{expression!r} never fires") from None

    def next_after(self, after: dt.datetime) -> dt.datetime:
        """The first fire instant strictly after ``after`` (aware), in UTC."""
        return _next_fire(self.expression, self.timezone, after.astimezone(UTC))

    def _first_after(self, after: dt.datetime) -> dt.datetime:
        local = after.astimezone(self.zone).replace(tzinfo=None)
        if self._offset(after - _DST_SLACK) == self._offset(after + _DST_SLACK):
            # No shift near ``after``: no earlier wall-clock time can map to a later instant,
            # so the first candidate after ``local`` that exists is the answer.
            candidates = _iterate_from(self.expression, local)
            while True:
                later = [i for i in self._instants(self._next(candidates, after)) if i > after]
                if later:
                    return min(later)
        # Near a shift a wall-clock time before ``local`` may stand for a later instant (the
        # repeated hour), so start earlier and keep the smallest instant after ``after``.
        candidates = _iterate_from(self.expression, local - _DST_SLACK)
        best: dt.datetime | None = None
        horizon: dt.datetime | None = None
        while True:
            naive = self._next(candidates, after)
            if horizon is not None and naive > horizon:
                assert best is not None
                return best
            for instant in self._instants(naive):
                if instant > after and (best is None or instant < best):
                    best = instant
                    horizon = naive + _DST_SLACK

    def _offset(self, instant: dt.datetime) -> dt.timedelta | None:
        return instant.astimezone(self.zone).utcoffset()

    def _next(self, candidates: croniter, after: dt.datetime) -> dt.datetime:
        try:
            naive: dt.datetime = candidates.get_next(dt.datetime)
        except (CroniterBadDateError, CroniterBadCronError, CroniterError):
            raise CronError(f"{self.expression!r} has no fire time after {after}") from None
        return naive

    def fires_after(self, after: dt.datetime) -> Iterator[dt.datetime]:
        """Every fire instant strictly after ``after``, in order, without end."""
        current = after
        while True:
            current = self.next_after(current)
            yield current

    def fires_between(
        self, start: dt.datetime, end: dt.datetime, *, limit: int
    ) -> list[dt.datetime]:
        """Up to ``limit`` fire instants in ``[start, end]``, oldest first."""
        out: list[dt.datetime] = []
        for instant in self.fires_after(start - dt.timedelta(microseconds=1)):
            if instant > end or len(out) >= limit:
                break
            out.append(instant)
        return out

    def is_fire_time(self, instant: dt.datetime) -> bool:
        """Whether ``instant`` is one of this schedule's fire instants."""
        return self.next_after(instant - dt.timedelta(microseconds=1)) == instant

    def shortest_gap(self) -> dt.timedelta:
        """The shortest gap between consecutive fires, the same whenever it is asked.

        Judged over the expression's pattern (its first 200 fires after a fixed instant)
        and around every shift of its zone's offset in a fixed reference window, where a
        repeated or skipped hour brings two fires closer: a schedule accepted in March is
        then not refused in October, when a shift comes within reach of a sample.
        """
        shortest = self.min_interval(_REFERENCE_START)
        for shift in offset_shifts(self.zone, _REFERENCE_START, _REFERENCE_END):
            fires = self.fires_within(shift - _DST_SLACK, shift + _DST_SLACK)
            for earlier, later in zip(fires, fires[1:], strict=False):
                shortest = min(shortest, later - earlier)
        return shortest

    def fires_within(self, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
        """Every fire instant in ``[start, end]``, oldest first.

        One pass over the wall-clock candidates: ``fires_between`` asks ``next_after`` once
        per fire, which near a shift rescans hours of candidates each time.
        """
        local = start.astimezone(self.zone).replace(tzinfo=None)
        stop = end.astimezone(self.zone).replace(tzinfo=None) + _DST_SLACK
        candidates = _iterate_from(self.expression, local - _DST_SLACK)
        found: set[dt.datetime] = set()
        while True:
            naive = self._next(candidates, start)
            if naive > stop:
                return sorted(found)
            found.update(i for i in self._instants(naive) if start <= i <= end)

    def min_interval(self, after: dt.datetime, samples: int = 200) -> dt.timedelta:
        """The shortest gap between consecutive fires among the next ``samples`` fires."""
        fires = self.fires_after(after)
        previous = next(fires)
        shortest: dt.timedelta | None = None
        for _ in range(samples - 1):
            current = next(fires)
            gap = current - previous
            shortest = gap if shortest is None else min(shortest, gap)
            previous = current
        assert shortest is not None
        return shortest

    def _instants(self, naive: dt.datetime) -> list[dt.datetime]:
        """The UTC instants that the local wall-clock time ``naive`` stands for."""
        first = naive.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = naive.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        exists = first.astimezone(self.zone).replace(tzinfo=None) == naive
        if not exists:
            # In a spring-forward gap. Real time never shows this wall-clock time; a fixed
            # time fires once, at the instant the gap ends.
            return [] if self.hour_is_wildcard else [self._gap_end(second, first)]
        if first != second and self.hour_is_wildcard:
            return [min(first, second), max(first, second)]
        return [min(first, second)]

    def _gap_end(self, low: dt.datetime, high: dt.datetime) -> dt.datetime:
        """The transition instant in (low, high]: the first whose local time is past the gap.

        ``low`` reads the gap time with the offset after the shift and lands before the
        transition, ``high`` reads it with the offset before and lands after it, so a binary
        search to the second finds the shift.
        """
        low_local = low.astimezone(self.zone).utcoffset()
        while high - low > dt.timedelta(seconds=1):
            mid = low + (high - low) / 2
            if mid.astimezone(self.zone).utcoffset() == low_local:
                low = mid
            else:
                high = mid
        return high.replace(microsecond=0)
