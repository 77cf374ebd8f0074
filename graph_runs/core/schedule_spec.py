"""What a schedule is: its validated spec, read from the CLI, the Python API or a stored row.

The same validation guards the CLI, the Python API and rows that another application wrote
straight into the table (the sensor revalidates those before firing them).
"""

import datetime as dt
import functools
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

import pydantic

from graph_runs.core.cron import (
    CronError,
    CronSchedule,
    cron_schedule,
    format_utc,
    parse_timezone,
)
from graph_runs.core.errors import InvalidInput
from graph_runs.core.money import micros_to_usd, usd_to_micros
from graph_runs.core.policies import (
    DEFAULT_APPROVAL_TIMEOUT,
    DEFAULT_CATCHUP_WINDOW,
    DEFAULT_PAUSE_AFTER_FAILURES,
    MAX_DURATION,
    Policies,
)

# Fields whose change moves the slots themselves, so next_run_at is recomputed from now.
TIMING_FIELDS = ("cron", "timezone", "run_at", "jitter_seconds", "start_at")


# The documented range of every number and instant a schedule holds (docs/security.md): far
# beyond real use, far inside what date arithmetic, money in micro-dollars and the
# database's integers can carry.
MAX_RUNS = 1_000_000_000
MAX_PAUSE_AFTER_FAILURES = 1_000_000
MAX_COST_USD = Decimal(1_000_000)
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
OUT_OF_RANGE = f"must be from {EARLIEST:%Y-%m-%d} to before {LATEST:%Y-%m-%d}"
MAX_INPUT_DEPTH = 32
# A graph id goes into the execution API's URL path: letters, digits and ``_.:-``, starting
# with a letter or digit (so never ``.`` or ``..``), at most 200 characters.
GRAPH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600


def _plain_json(value: dict[str, Any]) -> dict[str, Any]:
    check_json(value)
    return value


# A run's input: a JSON object that JSON can carry faithfully (see ``check_json``).
JsonObject = Annotated[dict[str, Any], pydantic.AfterValidator(_plain_json)]


@dataclass(frozen=True)
class ScheduleLimits:
    """Operator-set bounds on what users may schedule."""

    min_interval_seconds: int = 60
    max_schedules_per_owner: int = 100
    max_input_bytes: int = 64 * 1024


UNLIMITED = ScheduleLimits(
    min_interval_seconds=0, max_schedules_per_owner=2**31, max_input_bytes=2**40
)


def require_in_range(field: str, instant: dt.datetime) -> None:
    """Raise InvalidInput naming ``field`` unless ``instant`` lies where a schedule's can."""
    if not EARLIEST <= instant < LATEST:
        raise InvalidInput(field, OUT_OF_RANGE)


def preview_fires(cron: str, timezone: str, after: dt.datetime, count: int) -> list[str]:
    """The first ``count`` fire instants strictly after ``after``, in UTC (``preview``)."""
    # No schedule fires outside the range, and near a date's limits the cron arithmetic
    # overflowed (issue 21, B8).
    require_in_range("from", after)
    try:
        schedule = CronSchedule(cron, timezone)
    except CronError as exc:
        raise InvalidInput("timezone" if "time zone" in str(exc) else "cron", str(exc)) from None
    fires = schedule.fires_after(after)
    return [format_utc(next(fires)) for _ in range(count)]


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class ScheduleSpec(pydantic.BaseModel):
    """What a user asks for; validated before anything is written."""

    model_config = pydantic.ConfigDict(extra="forbid")

    owner: str = pydantic.Field(min_length=1, max_length=200)
    graph_id: str = pydantic.Field(pattern=GRAPH_ID_PATTERN)
    input: JsonObject = pydantic.Field(default_factory=dict)
    cron: str | None = None
    timezone: str = "UTC"
    run_at: dt.datetime | None = None
    grant_id: str = pydantic.Field(min_length=1, max_length=40)
    max_cost_usd: Decimal | None = pydantic.Field(
        default=None, ge=0, le=MAX_COST_USD, allow_inf_nan=False
    )
    timeout_seconds: int | None = pydantic.Field(default=None, gt=0, le=MAX_TIMEOUT_SECONDS)
    external_id: str | None = pydantic.Field(default=None, min_length=1, max_length=200)
    overlap: Literal["skip", "buffer_one", "allow_all", "cancel_other"] = "skip"
    catchup: Literal["none", "latest", "all"] = "latest"
    catchup_window_seconds: int = pydantic.Field(
        default=int(DEFAULT_CATCHUP_WINDOW.total_seconds()),
        ge=0,
        le=int(MAX_DURATION.total_seconds()),
    )
    jitter_seconds: int = pydantic.Field(default=0, ge=0, le=int(MAX_DURATION.total_seconds()))
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    max_runs: int | None = pydantic.Field(default=None, ge=1, le=MAX_RUNS)
    pause_after_failures: int = pydantic.Field(
        default=DEFAULT_PAUSE_AFTER_FAILURES, ge=0, le=MAX_PAUSE_AFTER_FAILURES
    )
    requires_approval: bool = False
    approval_timeout_seconds: int = pydantic.Field(
        default=int(DEFAULT_APPROVAL_TIMEOUT.total_seconds()),
        ge=60,
        le=int(MAX_DURATION.total_seconds()),
    )
    on_approval_timeout: Literal["skip", "approve"] = "skip"

    @pydantic.field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            parse_timezone(value)
        except CronError as exc:
            raise ValueError(str(exc)) from None
        return value

    @pydantic.field_validator("run_at", "start_at", "end_at")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        value = _aware(value)
        if value is not None and not EARLIEST <= value < LATEST:
            raise ValueError(OUT_OF_RANGE)
        return value

    @pydantic.model_validator(mode="after")
    def _one_timing(self) -> "ScheduleSpec":
        if (self.cron is None) == (self.run_at is None):
            raise ValueError("give either a cron expression or a one-time run_at, not both")
        return self

    def cron_schedule(self) -> CronSchedule | None:
        """The parsed cron schedule, or None for a one-time schedule."""
        return None if self.cron is None else cron_schedule(self.cron, self.timezone)

    def policies(self) -> Policies:
        """The policies this spec sets."""
        return Policies(
            overlap=self.overlap,
            catchup=self.catchup,
            catchup_window=dt.timedelta(seconds=self.catchup_window_seconds),
            jitter_seconds=self.jitter_seconds,
            start_at=self.start_at,
            end_at=self.end_at,
            max_runs=self.max_runs,
            pause_after_failures=self.pause_after_failures,
        )

    def stored(self) -> dict[str, Any]:
        """The spec as the schedules table stores it (money in micro-dollars)."""
        values = self.model_dump(exclude={"max_cost_usd"})
        values["max_cost_micros"] = (
            None if self.max_cost_usd is None else usd_to_micros(self.max_cost_usd)
        )
        return values


def check_json(value: Any, depth: int = 0) -> None:
    """Refuse what JSON cannot carry faithfully; raises ValueError.

    NaN and infinities, NUL characters, lone surrogates, and nesting deeper than
    ``MAX_INPUT_DEPTH``: each is accepted by Python's json and refused, or changed, by a
    database or a peer further on.
    """
    if depth > MAX_INPUT_DEPTH:
        raise ValueError(f"is nested deeper than {MAX_INPUT_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("holds a number that is not finite (NaN or infinity)")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("holds a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("holds a lone surrogate, which is not text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json(key, depth + 1)
            check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_json(item, depth + 1)


class RunRequestSpec(pydantic.BaseModel):
    """A run asked for outside any schedule: the same checks as a schedule's fields."""

    model_config = pydantic.ConfigDict(extra="forbid")

    idempotency_key: str = pydantic.Field(min_length=1, max_length=200)
    graph_id: str = pydantic.Field(pattern=GRAPH_ID_PATTERN)
    grant_id: str = pydantic.Field(min_length=1, max_length=40)
    input: JsonObject = pydantic.Field(default_factory=dict)
    max_cost_usd: Decimal | None = pydantic.Field(
        default=None, ge=0, le=MAX_COST_USD, allow_inf_nan=False
    )
    timeout_seconds: int | None = pydantic.Field(default=None, gt=0, le=MAX_TIMEOUT_SECONDS)


def validate_run_request(raw: dict[str, Any], limits: ScheduleLimits) -> RunRequestSpec:
    """Validate an ad-hoc run's request as a schedule's would be; raise InvalidInput."""
    try:
        request = RunRequestSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise first_error(exc, "request") from None
    _check_input_size(request.input, limits)
    return request


def first_error(exc: pydantic.ValidationError, whole: str) -> InvalidInput:
    """The first problem pydantic found, as InvalidInput naming its field."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or whole
    if field == "cron" or (field == "schedule" and "cron" in first["msg"]):
        field = "cron"
    return InvalidInput(field, first["msg"].removeprefix("Value error, "))


def _check_input_size(value: dict[str, Any], limits: ScheduleLimits) -> None:
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > limits.max_input_bytes:
        raise InvalidInput("input", f"is {size} bytes; the limit is {limits.max_input_bytes}")


def validate_spec(raw: dict[str, Any], limits: ScheduleLimits, now: dt.datetime) -> ScheduleSpec:
    """Validate a schedule fully; raise InvalidInput naming the first bad field."""
    try:
        spec = ScheduleSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise first_error(exc, "schedule") from None
    if spec.cron is not None:
        try:
            cron_schedule(spec.cron, spec.timezone)  # raises on a bad expression or zone
        except CronError as exc:
            raise InvalidInput("cron", str(exc)) from None
        # Fire instants are whole minutes, so no expression fires more often than every 60 s:
        # only a stricter limit, or a jitter of a minute or more, needs the (costly) scan of
        # upcoming fires. Cached, because the sensor revalidates every due row on every tick
        # and many rows share an expression.
        shortest = (
            _min_interval_seconds(spec.cron, spec.timezone)
            if limits.min_interval_seconds > 60 or spec.jitter_seconds >= 60
            else None
        )
        if shortest is not None and shortest < limits.min_interval_seconds:
            raise InvalidInput(
                "cron",
                f"fires every {int(shortest)} s at times; "
                f"the minimum interval is {limits.min_interval_seconds} s",
            )
        # A jitter shorter than every gap keeps due times in slot order, so a later slot
        # never comes due before an earlier one.
        if shortest is not None and spec.jitter_seconds >= shortest:
            raise InvalidInput(
                "jitter",
                f"is {spec.jitter_seconds} s; it must be shorter than the shortest gap "
                f"between fires ({int(shortest)} s)",
            )
    else:
        for name in ("start_at", "end_at", "max_runs"):
            if getattr(spec, name) is not None:
                raise InvalidInput(name, "applies to cron schedules only; a run_at fires once")
    if spec.start_at and spec.end_at and spec.end_at <= spec.start_at:
        raise InvalidInput("end_at", "must be after start_at")
    _check_input_size(spec.input, limits)
    return spec


@functools.lru_cache(maxsize=8192)
def _min_interval_seconds(expression: str, timezone: str) -> float:
    return cron_schedule(expression, timezone).shortest_gap().total_seconds()


def row_as_raw(row: Any) -> dict[str, Any]:
    """A stored row as the raw input ``validate_spec`` takes."""
    if row.input is not None and not isinstance(row.input, dict):
        raise InvalidInput("input", "must be a JSON object")
    raw: dict[str, Any] = {
        "owner": row.owner,
        "graph_id": row.graph_id,
        "input": row.input or {},
        "cron": row.cron,
        "timezone": row.timezone or "UTC",
        "run_at": row.run_at,
        "grant_id": row.grant_id,
        "max_cost_usd": micros_to_usd(row.max_cost_micros),
        "timeout_seconds": row.timeout_seconds,
        "external_id": row.external_id,
        "start_at": row.start_at,
        "end_at": row.end_at,
        "max_runs": row.max_runs,
    }
    # NULLs from another application's rows mean the default.
    for name in (
        "overlap",
        "catchup",
        "catchup_window_seconds",
        "jitter_seconds",
        "pause_after_failures",
        "requires_approval",
        "approval_timeout_seconds",
        "on_approval_timeout",
    ):
        if getattr(row, name) is not None:
            raw[name] = getattr(row, name)
    return raw


def spec_from_row(row: Any, limits: ScheduleLimits, now: dt.datetime) -> ScheduleSpec:
    """Revalidate a stored row (perhaps written by another application); raises InvalidInput."""
    return validate_spec(row_as_raw(row), limits, now)


def cursor_of(row: Any, spec: ScheduleSpec, now: dt.datetime) -> dt.datetime | None:
    """The instant after which a stored schedule's slots have no ledger row yet.

    Rows written before ``slot_cursor`` existed, or by another application, have none: their
    ``next_run_at`` (a due time, so less the jitter) or else their creation bounds it.
    """
    if row.slot_cursor is not None:
        return row.slot_cursor
    if spec.cron is None:
        return None
    if row.next_run_at is not None:
        return row.next_run_at - dt.timedelta(seconds=spec.jitter_seconds, microseconds=1)
    return row.created_at or now
