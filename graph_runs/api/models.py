"""The shapes the management API reads and answers, as the OpenAPI document declares them.

Answers are the views the CLI prints with ``--json``, so the two never disagree. Request
bodies are validated by these models (unknown fields refused), except a schedule's spec,
which ``validate_spec`` checks exactly as the CLI's, field names and messages alike.
"""

import datetime as dt
from decimal import Decimal
from typing import Any, Literal

import pydantic

from graph_runs.api.examples import EXAMPLES
from graph_runs.core.schedule_spec import ScheduleSpec

Strict = pydantic.ConfigDict(extra="forbid")
# An answer may grow fields: a client must ignore what it does not know.
Open = pydantic.ConfigDict(extra="allow")


def shown(model: type[pydantic.BaseModel]) -> type[pydantic.BaseModel]:
    """Give an answer's model its example (graph_runs/api/examples.py) in the document."""
    model.model_config["json_schema_extra"] = {"examples": [EXAMPLES[model.__name__]]}
    model.model_rebuild(force=True)
    return model


Instant = str  # RFC 3339, UTC, e.g. "2026-12-07T09:00:00Z"
Usd = str  # a decimal string, e.g. "0.0125"


class PoliciesOut(pydantic.BaseModel):
    """The policies in force for a schedule."""

    model_config = Open
    overlap: str
    catchup: str
    catchup_window: str
    jitter: str
    start_at: Instant | None
    end_at: Instant | None
    max_runs: int | None
    pause_after_failures: int
    requires_approval: bool
    approval_timeout: str
    on_approval_timeout: str


@shown
class ScheduleOut(pydantic.BaseModel):
    """A schedule, as ``schedules describe`` starts."""

    model_config = Open
    id: str
    external_id: str | None
    owner: str
    graph_id: str
    input: dict[str, Any]
    cron: str | None
    timezone: str
    run_at: Instant | None
    enabled: bool
    status: str
    grant_id: str
    max_cost_usd: Usd | None
    timeout_seconds: int | None
    policies: PoliciesOut
    next_run_at: Instant | None
    last_run_at: Instant | None
    runs_total: int
    runs_succeeded: int
    runs_failed: int
    consecutive_failures: int
    last_error: str | None
    pause_note: str | None
    paused_by: str | None
    paused_at: Instant | None
    created_at: Instant | None


@shown
class UpsertOut(ScheduleOut):
    """A schedule after an upsert, with what the upsert did."""

    upsert: Literal["created", "updated", "unchanged"]


@shown
class SchedulePage(pydantic.BaseModel):
    """One page of schedules; pass ``next_cursor`` as ``cursor`` for the next."""

    model_config = Open
    items: list[ScheduleOut]
    next_cursor: str | None


class ActionOut(pydantic.BaseModel):
    """A ledger row, as describe lists it."""

    model_config = Open
    ledger_id: str
    scheduled_for: Instant | None
    trigger_kind: str
    requested_by: str | None
    status: str
    started_at: Instant | None
    finished_at: Instant | None
    dagster_run_id: str | None
    api_run_id: str | None
    cost_usd: Usd | None
    error_code: str | None
    error_message: str | None
    over_budget: bool


class FireTime(pydantic.BaseModel):
    """A coming slot and when it fires, jitter applied."""

    model_config = Open
    slot: Instant
    fires_at: Instant


class PauseOut(pydantic.BaseModel):
    """Whether a schedule is paused, by whom and why."""

    model_config = Open
    paused: bool
    note: str | None
    by: str | None
    at: Instant | None


@shown
class DescribeOut(ScheduleOut):
    """What ``schedules describe`` shows."""

    pause: PauseOut
    counts: dict[str, Any]
    recent_actions: list[ActionOut]
    running: list[ActionOut]
    next_fire_times: list[FireTime]


class SlotOut(pydantic.BaseModel):
    """One ledger row of a schedule: a slot, a trigger or a backfill, with its outcome."""

    model_config = Open
    ledger_id: str
    slot: Instant | None
    trigger_kind: str
    requested_by: str | None
    status: str
    reason: str | None
    reason_message: str | None
    cost_usd: Usd | None
    over_budget: bool
    tokens: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    api_run_id: str | None
    dagster_run_id: str | None
    dagster_run_url: str | None
    created_at: Instant | None
    started_at: Instant | None
    finished_at: Instant | None


@shown
class SlotPage(pydantic.BaseModel):
    """One page of a schedule's slots, newest first."""

    model_config = Open
    items: list[SlotOut]
    next_cursor: str | None


@shown
class DeleteOut(pydantic.BaseModel):
    """Whether this DELETE deleted the schedule: false when an earlier one had."""

    model_config = Open
    id: str
    deleted: bool


@shown
class TriggerOut(pydantic.BaseModel):
    """The run a trigger asked for."""

    model_config = Open
    schedule_id: str
    ledger_id: str
    idempotency_key: str
    status: str
    created: bool


@shown
class BackfillOut(pydantic.BaseModel):
    """What a backfill will run, slot by slot."""

    model_config = Open
    schedule_id: str
    slots: int
    ran: int
    already: int
    skipped_overlap: int
    overlap: str
    detail: list[dict[str, Any]]


@shown
class PreviewOut(pydantic.BaseModel):
    """The next fire instants, in UTC."""

    model_config = Open
    fires: list[Instant]


@shown
class GrantOut(pydantic.BaseModel):
    """An execution grant."""

    model_config = Open
    id: str
    owner: str
    billing_account: str
    scopes: list[str]
    connection_ids: list[str]
    created_at: Instant | None
    expires_at: Instant | None
    revoked_at: Instant | None
    revoked_by: str | None


@shown
class RevokedGrantOut(GrantOut):
    """A revoked grant, and how many of its schedules the revocation paused."""

    paused_schedules: int


@shown
class GrantList(pydantic.BaseModel):
    """Grants, oldest first."""

    model_config = Open
    items: list[GrantOut]


@shown
class ApprovalOut(pydantic.BaseModel):
    """A slot waiting for, or given, a human's decision."""

    model_config = Open
    id: str
    status: str
    schedule_id: str
    scheduled_for: Instant | None
    graph_id: str
    owner: str
    ledger_id: str
    expires_at: Instant | None
    decided_by: str | None
    run_status: str


@shown
class ApprovalList(pydantic.BaseModel):
    """Approvals, oldest first."""

    model_config = Open
    items: list[ApprovalOut]


@shown
class BudgetOut(pydantic.BaseModel):
    """A billing account's limit and its spend this period."""

    model_config = Open
    billing_account: str
    period: str
    period_start: Instant
    limit_usd: Usd
    spent_usd: Usd
    reached: bool


@shown
class BudgetList(pydantic.BaseModel):
    """Every budget this key may see."""

    model_config = Open
    items: list[BudgetOut]


@shown
class SpendOut(pydantic.BaseModel):
    """A billing account's spend in a range, in total and by day, graph and schedule."""

    model_config = Open
    billing_account: str
    total: dict[str, Any]
    by_day: list[dict[str, Any]]
    by_graph: list[dict[str, Any]]
    by_schedule: list[dict[str, Any]]


@shown
class Health(pydantic.BaseModel):
    """Liveness or readiness, and what is wrong when not ready."""

    model_config = Open
    ok: bool
    problems: list[str] = []


# Request bodies.


class PauseIn(pydantic.BaseModel):
    """Why the schedule is paused, and whether to stop runs already started."""

    model_config = Strict
    note: str | None = pydantic.Field(default=None, max_length=2000)
    by: str | None = pydantic.Field(default=None, min_length=1, max_length=150)
    terminate: bool = False


class ResumeIn(pydantic.BaseModel):
    """Who resumes it."""

    model_config = Strict
    by: str | None = pydantic.Field(default=None, min_length=1, max_length=150)


class TriggerIn(pydantic.BaseModel):
    """Who asks for the run, and what to do if one is going."""

    model_config = Strict
    requested_by: str | None = pydantic.Field(default=None, min_length=1, max_length=150)
    overlap: Literal["skip", "buffer_one", "allow_all", "cancel_other"] = "allow_all"


class BackfillIn(pydantic.BaseModel):
    """The range of slots to run, both ends included."""

    model_config = pydantic.ConfigDict(extra="forbid", populate_by_name=True)
    from_: dt.datetime = pydantic.Field(alias="from")
    to: dt.datetime
    overlap: Literal["skip", "buffer_one", "allow_all", "cancel_other"] = "allow_all"
    requested_by: str | None = pydantic.Field(default=None, min_length=1, max_length=150)


class GrantIn(pydantic.BaseModel):
    """A new execution grant."""

    model_config = Strict
    owner: str | None = pydantic.Field(default=None, min_length=1, max_length=200)
    billing_account: str = pydantic.Field(min_length=1, max_length=200)
    scopes: list[str] = pydantic.Field(min_length=1, max_length=100)
    expires_at: dt.datetime | None = None
    connection_ids: list[str] = pydantic.Field(default_factory=list, max_length=100)


class DecisionIn(pydantic.BaseModel):
    """Who decides, and why."""

    model_config = Strict
    by: str | None = pydantic.Field(default=None, min_length=1, max_length=150)
    note: str | None = pydantic.Field(default=None, max_length=2000)


class BudgetIn(pydantic.BaseModel):
    """A billing account's limit for a period."""

    model_config = Strict
    limit_usd: Decimal = pydantic.Field(ge=0, allow_inf_nan=False)
    period: Literal["month"] = "month"


def spec_schema(*, partial: bool, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON schema of a schedule's spec; ``partial`` for a merge patch (none required).

    ``optional`` names required fields that the request may leave out: the path gives them
    (an upsert's owner and external id), or the key does (an owner-scoped key's owner).
    """
    schema = ScheduleSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    schema["required"] = [name for name in schema.get("required", []) if name not in optional]
    if partial:
        schema = {**schema, "required": [], "title": "ScheduleSpecPatch"}
        schema["properties"] = {
            name: {"anyOf": [prop, {"type": "null"}]} for name, prop in schema["properties"].items()
        }
    return schema
