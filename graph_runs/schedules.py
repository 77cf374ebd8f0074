"""User schedules: validation and the Python API behind the CLI.

The same validation guards the CLI, the Python API and rows that another application wrote
straight into the table (the sensor validates those before firing them).
"""

import datetime as dt
import functools
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pydantic
import sqlalchemy as sa

from graph_runs.cron import CronError, CronSchedule, parse_timezone
from graph_runs.errors import InvalidInput, NotFound
from graph_runs.grants import get_grant
from graph_runs.ids import new_id
from graph_runs.money import micros_to_usd, usd_to_micros
from graph_runs.tables import audit, graph_runs, schedules


@dataclass(frozen=True)
class ScheduleLimits:
    """Operator-set bounds on what users may schedule."""

    min_interval_seconds: int = 60
    max_schedules_per_owner: int = 100
    max_input_bytes: int = 64 * 1024


class ScheduleSpec(pydantic.BaseModel):
    """What a user asks for; validated before anything is written."""

    model_config = pydantic.ConfigDict(extra="forbid")

    owner: str = pydantic.Field(min_length=1, max_length=200)
    graph_id: str = pydantic.Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")
    input: dict[str, Any] = pydantic.Field(default_factory=dict)
    cron: str | None = None
    timezone: str = "UTC"
    run_at: dt.datetime | None = None
    grant_id: str = pydantic.Field(min_length=1, max_length=40)
    max_cost_usd: Decimal | None = pydantic.Field(default=None, ge=0, max_digits=14)
    timeout_seconds: int | None = pydantic.Field(default=None, gt=0, le=7 * 24 * 3600)

    @pydantic.field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            parse_timezone(value)
        except CronError as exc:
            raise ValueError(str(exc)) from None
        return value

    @pydantic.field_validator("run_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)

    @pydantic.model_validator(mode="after")
    def _one_timing(self) -> "ScheduleSpec":
        if (self.cron is None) == (self.run_at is None):
            raise ValueError("give either a cron expression or a one-time run_at, not both")
        return self

    def cron_schedule(self) -> CronSchedule | None:
        """The parsed cron schedule, or None for a one-time schedule."""
        return None if self.cron is None else CronSchedule(self.cron, self.timezone)


def validate_spec(raw: dict[str, Any], limits: ScheduleLimits, now: dt.datetime) -> ScheduleSpec:
    """Validate a schedule fully; raise InvalidInput naming the first bad field."""
    try:
        spec = ScheduleSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "schedule"
        if field == "cron" or (field == "schedule" and "cron" in first["msg"]):
            field = "cron"
        raise InvalidInput(field, first["msg"].removeprefix("Value error, ")) from None
    if spec.cron is not None:
        try:
            CronSchedule(spec.cron, spec.timezone)  # raises on a bad expression or zone
        except CronError as exc:
            raise InvalidInput("cron", str(exc)) from None
        # Fire instants are whole minutes, so no expression fires more often than every 60 s:
        # only a stricter limit needs the (costly) scan of upcoming fires.
        # Cached, because the sensor revalidates every due row on every tick and many rows
        # share an expression.
        shortest = (
            _min_interval_seconds(spec.cron, spec.timezone, now)
            if limits.min_interval_seconds > 60
            else None
        )
        if shortest is not None and shortest < limits.min_interval_seconds:
            raise InvalidInput(
                "cron",
                f"fires every {int(shortest)} s at times; "
                f"the minimum interval is {limits.min_interval_seconds} s",
            )
    size = len(json.dumps(spec.input, separators=(",", ":")).encode())
    if size > limits.max_input_bytes:
        raise InvalidInput("input", f"is {size} bytes; the limit is {limits.max_input_bytes}")
    return spec


@functools.lru_cache(maxsize=8192)
def _min_interval_seconds(expression: str, timezone: str, now: dt.datetime) -> float:
    return CronSchedule(expression, timezone).min_interval(now).total_seconds()


def first_slot(spec: ScheduleSpec, after: dt.datetime) -> dt.datetime | None:
    """The first slot strictly after ``after`` (a one-time schedule's is its run_at)."""
    cron = spec.cron_schedule()
    if cron is None:
        return spec.run_at
    return cron.next_after(after)


def create_schedule(
    conn: sa.Connection,
    raw: dict[str, Any],
    *,
    limits: ScheduleLimits,
    now: dt.datetime,
    actor: str = "cli",
) -> dict[str, Any]:
    """Validate and store a schedule; returns its view. Nothing is written on error."""
    spec = validate_spec(raw, limits, now)
    grant = get_grant(conn, spec.grant_id)
    if grant is None:
        raise InvalidInput("grant_id", f"grant {spec.grant_id} not found")
    if grant.owner != spec.owner:
        raise InvalidInput(
            "grant_id", f"grant {grant.id} belongs to {grant.owner}, not {spec.owner}"
        )
    count = conn.execute(
        sa.select(sa.func.count())
        .select_from(schedules)
        .where(schedules.c.owner == spec.owner, schedules.c.status != "deleted")
    ).scalar_one()
    if count >= limits.max_schedules_per_owner:
        raise InvalidInput(
            "owner",
            f"{spec.owner} has {count} schedules; the limit is {limits.max_schedules_per_owner}",
        )
    schedule_id = new_id("sch")
    conn.execute(
        schedules.insert().values(
            id=schedule_id,
            owner=spec.owner,
            graph_id=spec.graph_id,
            input=spec.input,
            cron=spec.cron,
            timezone=spec.timezone,
            run_at=spec.run_at,
            enabled=True,
            status="active",
            grant_id=spec.grant_id,
            max_cost_micros=None if spec.max_cost_usd is None else usd_to_micros(spec.max_cost_usd),
            timeout_seconds=spec.timeout_seconds,
            # A one-time run_at in the past still fires, under the catch-up rules.
            next_run_at=first_slot(spec, now),
            created_at=now,
            updated_at=now,
        )
    )
    audit(
        conn,
        at=now,
        actor=actor,
        action="schedule.create",
        entity_type="schedule",
        entity_id=schedule_id,
    )
    return get_schedule(conn, schedule_id)


def _row(conn: sa.Connection, schedule_id: str) -> Any:
    row = conn.execute(sa.select(schedules).where(schedules.c.id == schedule_id)).one_or_none()
    if row is None or row.status == "deleted":
        raise NotFound(f"schedule {schedule_id} not found")
    return row


def view(row: Any) -> dict[str, Any]:
    """A JSON-ready view of a schedules row."""

    def iso(value: dt.datetime | None) -> str | None:
        return None if value is None else value.isoformat().replace("+00:00", "Z")

    max_cost = micros_to_usd(row.max_cost_micros)
    return {
        "id": row.id,
        "owner": row.owner,
        "graph_id": row.graph_id,
        "input": row.input,
        "cron": row.cron,
        "timezone": row.timezone,
        "run_at": iso(row.run_at),
        "enabled": bool(row.enabled),
        "status": row.status,
        "grant_id": row.grant_id,
        "max_cost_usd": None if max_cost is None else str(max_cost),
        "timeout_seconds": row.timeout_seconds,
        "next_run_at": iso(row.next_run_at),
        "last_run_at": iso(row.last_run_at),
        "runs_total": row.runs_total,
        "runs_succeeded": row.runs_succeeded,
        "runs_failed": row.runs_failed,
        "last_error": row.last_error,
        "pause_note": row.pause_note,
        "paused_at": iso(row.paused_at),
        "created_at": iso(row.created_at),
    }


def get_schedule(conn: sa.Connection, schedule_id: str) -> dict[str, Any]:
    """The schedule's view; raises NotFound."""
    return view(_row(conn, schedule_id))


def list_schedules(conn: sa.Connection, owner: str | None = None) -> list[dict[str, Any]]:
    """Schedules that are not deleted, oldest first."""
    query = (
        sa.select(schedules)
        .where(schedules.c.status != "deleted")
        .order_by(schedules.c.created_at, schedules.c.id)
    )
    if owner is not None:
        query = query.where(schedules.c.owner == owner)
    return [view(row) for row in conn.execute(query)]


def pause_schedule(
    conn: sa.Connection, schedule_id: str, *, now: dt.datetime, note: str | None, actor: str = "cli"
) -> dict[str, Any]:
    """Stop a schedule from firing; pausing a paused schedule changes nothing."""
    row = _row(conn, schedule_id)
    if row.enabled:
        conn.execute(
            schedules.update()
            .where(schedules.c.id == schedule_id)
            .values(enabled=False, pause_note=note, paused_at=now, updated_at=now)
        )
        audit(
            conn,
            at=now,
            actor=actor,
            action="schedule.pause",
            entity_type="schedule",
            entity_id=schedule_id,
            detail={"note": note},
        )
    return get_schedule(conn, schedule_id)


def resume_schedule(
    conn: sa.Connection,
    schedule_id: str,
    *,
    now: dt.datetime,
    limits: ScheduleLimits,
    actor: str = "cli",
) -> dict[str, Any]:
    """Fire again from now on: slots that passed while paused are not fired.

    Resuming a schedule in ``error`` revalidates it first, so that a fixed row is served.
    """
    row = _row(conn, schedule_id)
    if row.enabled and row.status == "active":
        return view(row)
    spec = spec_from_row(row, limits, now)
    next_run_at = first_slot(spec, now) if spec.cron is not None else row.next_run_at
    conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id)
        .values(
            enabled=True,
            status="active" if row.status == "error" else row.status,
            last_error=None if row.status == "error" else row.last_error,
            pause_note=None,
            paused_at=None,
            next_run_at=next_run_at,
            updated_at=now,
        )
    )
    audit(
        conn,
        at=now,
        actor=actor,
        action="schedule.resume",
        entity_type="schedule",
        entity_id=schedule_id,
    )
    return get_schedule(conn, schedule_id)


def delete_schedule(
    conn: sa.Connection, schedule_id: str, *, now: dt.datetime, actor: str = "cli"
) -> bool:
    """Delete a schedule, keeping its ledger and receipts; returns False if it was not there.

    The row stays, marked ``deleted``, so that the ledger keeps its schedule; the sensor
    removes its partition on its next tick.
    """
    result = conn.execute(
        schedules.update()
        .where(schedules.c.id == schedule_id, schedules.c.status != "deleted")
        .values(status="deleted", enabled=False, deleted_at=now, updated_at=now, next_run_at=None)
    )
    if result.rowcount:
        # Slots claimed but not yet handed to Dagster would otherwise wait for a partition
        # that no longer exists; they end here, visibly.
        conn.execute(
            graph_runs.update()
            .where(graph_runs.c.schedule_id == schedule_id, graph_runs.c.status == "pending")
            .values(
                status="cancelled",
                error_code="schedule_deleted",
                error_message="the schedule was deleted before this slot's run was created",
                finished_at=now,
            )
        )
        audit(
            conn,
            at=now,
            actor=actor,
            action="schedule.delete",
            entity_type="schedule",
            entity_id=schedule_id,
        )
    return bool(result.rowcount)


def spec_from_row(row: Any, limits: ScheduleLimits, now: dt.datetime) -> ScheduleSpec:
    """Revalidate a stored row (perhaps written by another application); raises InvalidInput."""
    if row.input is not None and not isinstance(row.input, dict):
        raise InvalidInput("input", "must be a JSON object")
    max_cost = micros_to_usd(row.max_cost_micros)
    return validate_spec(
        {
            "owner": row.owner,
            "graph_id": row.graph_id,
            "input": row.input or {},
            "cron": row.cron,
            "timezone": row.timezone or "UTC",
            "run_at": row.run_at,
            "grant_id": row.grant_id,
            "max_cost_usd": max_cost,
            "timeout_seconds": row.timeout_seconds,
        },
        limits,
        now,
    )
