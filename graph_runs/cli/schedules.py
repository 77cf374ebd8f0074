"""``graph-runs schedules``: the commands that manage users' schedules.

Create, upsert, update, pause, resume, delete, trigger, backfill, describe, list, preview.
"""

from collections.abc import Callable
from typing import Any

import click

from graph_runs.cli.support import (
    F,
    decimal,
    emit,
    instant,
    json_object,
    json_option,
    now,
    settings,
    transaction,
)
from graph_runs.core.errors import InvalidInput
from graph_runs.core.policies import (
    CATCHUP_POLICIES,
    ON_APPROVAL_TIMEOUT,
    OVERLAP_POLICIES,
    parse_duration,
)
from graph_runs.core.schedule_spec import preview_fires
from graph_runs.core.text import bounded
from graph_runs.scheduling import refire, triggers
from graph_runs.scheduling import schedules as schedules_api
from graph_runs.scheduling.describe import describe_schedule
from graph_runs.scheduling.triggers import DEFAULT_MANUAL_OVERLAP

MAX_PREVIEW = 10_000
MAX_REASON = 160


def _schedule_line(s: dict[str, Any]) -> str:
    timing = f"cron={s['cron']!r} tz={s['timezone']}" if s["cron"] else f"run_at={s['run_at']}"
    state = s["status"] if s["enabled"] else f"{s['status']} (paused)"
    # A paused schedule's cursor still names a slot, which will not fire until it resumes.
    upcoming = (s["next_run_at"] or "-") if s["enabled"] else "paused"
    return (
        f"{s['id']}  owner={s['owner']}  graph={s['graph_id']}  {timing}  {state}  "
        f"next={upcoming}  scheduled={s['runs_total']} ok={s['runs_succeeded']} "
        f"failed={s['runs_failed']}"
    )


@click.group()
def schedules() -> None:
    """User schedules."""


def spec_options(func: F) -> F:
    """The options that set a schedule's spec, shared by create, upsert and update.

    Each defaults to None, meaning "not given": create and upsert then use the default that
    docs/scheduling.md documents, and update keeps the current value.
    """
    options = [
        click.option("--owner"),
        click.option("--external-id", help="The app's own id; unique per owner."),
        click.option("--graph", "graph_id"),
        click.option("--cron", help="5-field cron expression, in --timezone"),
        click.option("--timezone", help="IANA time zone  [default: UTC]"),
        click.option("--grant", "grant_id"),
        click.option("--input", "input_json", help="JSON object passed to the graph"),
        click.option("--run-at", help="ISO 8601 instant, for a one-time schedule"),
        click.option("--max-cost-usd"),
        click.option("--timeout-seconds", type=int),
        click.option(
            "--overlap",
            type=click.Choice(OVERLAP_POLICIES),
            help="When a slot comes due while a run is going  [default: skip]",
        ),
        click.option(
            "--catchup",
            type=click.Choice(CATCHUP_POLICIES),
            help="Which slots missed during downtime fire  [default: latest]",
        ),
        click.option("--catchup-window", help="DURATION such as 90s, 10m, 1h, 2d  [default: 1h]"),
        click.option("--jitter", help="DURATION; each slot fires up to this late  [default: 0s]"),
        click.option("--start-at", help="ISO 8601 instant; no slot before it"),
        click.option("--end-at", help="ISO 8601 instant; no slot after it"),
        click.option("--max-runs", type=int, help="Complete after this many scheduled runs"),
        click.option(
            "--pause-after-failures",
            type=int,
            help="Pause after this many failed runs in a row; 0 never  [default: 3]",
        ),
        click.option(
            "--requires-approval/--no-requires-approval",
            default=None,
            help="Each slot waits for a human's approval before it runs  [default: no]",
        ),
        click.option(
            "--approval-timeout",
            help="DURATION a slot waits for a decision  [default: 24h]",
        ),
        click.option(
            "--on-timeout",
            type=click.Choice(ON_APPROVAL_TIMEOUT),
            help="What an undecided slot does once its approval times out  [default: skip]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _spec_from_options(options: dict[str, Any]) -> dict[str, Any]:
    """The raw spec for the options given; options left out are absent."""
    converters: dict[str, tuple[str, Callable[[str], Any]]] = {
        "input_json": ("input", lambda v: json_object("input", v)),
        "run_at": ("run_at", lambda v: instant("run_at", v)),
        "start_at": ("start_at", lambda v: instant("start_at", v)),
        "end_at": ("end_at", lambda v: instant("end_at", v)),
        "max_cost_usd": ("max_cost_usd", lambda v: decimal("max_cost_usd", v)),
        "catchup_window": (
            "catchup_window_seconds",
            lambda v: int(parse_duration("catchup_window", v).total_seconds()),
        ),
        "jitter": ("jitter_seconds", lambda v: int(parse_duration("jitter", v).total_seconds())),
        "approval_timeout": (
            "approval_timeout_seconds",
            lambda v: int(parse_duration("approval_timeout", v).total_seconds()),
        ),
        "on_timeout": ("on_approval_timeout", lambda v: v),
    }
    raw: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        key, convert = converters.get(name, (name, lambda v: v))
        raw[key] = convert(value)
    return raw


def _require(raw: dict[str, Any], *names: str) -> None:
    flags = {"graph_id": "--graph", "grant_id": "--grant"}
    for name in names:
        if name not in raw:
            flag = flags.get(name, "--" + name.replace("_", "-"))
            raise InvalidInput(name, f"is required ({flag})")


@schedules.command("create")
@spec_options
@json_option
def schedules_create(as_json: bool, **options: Any) -> None:
    """Create a schedule and print it, with its id."""
    raw = _spec_from_options(options)
    _require(raw, "owner", "graph_id", "grant_id")
    limits = settings().schedule_limits
    with transaction() as conn:
        view = schedules_api.create_schedule(conn, raw, limits=limits, now=now())
    emit(as_json, view, _schedule_line)


@schedules.command("upsert")
@spec_options
@json_option
def schedules_upsert(as_json: bool, **options: Any) -> None:
    """Create the owner's schedule with --external-id, or set it to these options in place.

    The options are the whole desired spec: one left out returns to its default.
    """
    raw = _spec_from_options(options)
    _require(raw, "owner", "external_id", "graph_id", "grant_id")
    limits = settings().schedule_limits
    with transaction() as conn:
        view, outcome = schedules_api.upsert_schedule(conn, raw, limits=limits, now=now())
    emit(
        as_json,
        {**view, "upsert": outcome},
        lambda d: f"{d['upsert']}: {_schedule_line(d)}",
    )


@schedules.command("update")
@click.argument("schedule_id")
@spec_options
@json_option
def schedules_update(schedule_id: str, as_json: bool, **options: Any) -> None:
    """Change the given fields of a schedule; a new cron or zone counts from now."""
    changes = _spec_from_options(options)
    if not changes:
        raise InvalidInput("schedule", "give at least one option to change")
    limits = settings().schedule_limits
    with transaction() as conn:
        view = schedules_api.update_schedule(conn, schedule_id, changes, limits=limits, now=now())
    emit(as_json, view, _schedule_line)


@schedules.command("list")
@click.option("--owner")
@json_option
def schedules_list(owner: str | None, as_json: bool) -> None:
    """List schedules that are not deleted."""
    with transaction() as conn:
        rows = schedules_api.list_schedules(conn, owner)
    emit(as_json, rows, lambda d: "\n".join(_schedule_line(s) for s in d) or "no schedules")


@schedules.command("pause")
@click.argument("schedule_id")
@click.option("--note", help="Why it is paused (kept and shown by describe).")
@click.option("--by", default="cli", show_default=True, help="Who pauses it (kept, audited).")
@click.option("--terminate", is_flag=True, help="Also stop runs that have already started.")
@json_option
def schedules_pause(
    schedule_id: str, note: str | None, by: str, terminate: bool, as_json: bool
) -> None:
    """Stop a schedule from firing and cancel its runs that have not started."""
    with transaction() as conn:
        view = schedules_api.pause_schedule(
            conn, schedule_id, now=now(), note=note, by=by, terminate=terminate
        )
    emit(as_json, view, _schedule_line)


@schedules.command("resume")
@click.argument("schedule_id")
@click.option("--by", default="cli", show_default=True, help="Who resumes it (audited).")
@json_option
def schedules_resume(schedule_id: str, by: str, as_json: bool) -> None:
    """Fire again from now on; slots that passed while paused are recorded, not fired."""
    limits = settings().schedule_limits
    with transaction() as conn:
        view = schedules_api.resume_schedule(conn, schedule_id, now=now(), limits=limits, by=by)
    emit(as_json, view, _schedule_line)


@schedules.command("delete")
@click.argument("schedule_id")
@click.option("--by", default="cli", show_default=True, help="Who deletes it (audited).")
@click.option("--terminate", is_flag=True, help="Also stop runs that have already started.")
@json_option
def schedules_delete(schedule_id: str, by: str, terminate: bool, as_json: bool) -> None:
    """Delete a schedule; its ledger and receipts stay, its partition goes."""
    with transaction() as conn:
        deleted = schedules_api.delete_schedule(
            conn, schedule_id, now=now(), by=by, terminate=terminate
        )
    emit(
        as_json,
        {"id": schedule_id, "deleted": deleted},
        lambda d: (
            f"{d['id']} deleted" if d["deleted"] else f"{d['id']} was not there; nothing to do"
        ),
    )


@schedules.command("trigger")
@click.argument("schedule_id")
@click.option("--requested-by", help="Who asks for the run (on the run and in the audit log).")
@click.option("--key", "request_key", help="Your idempotency key: the same key runs once.")
@click.option(
    "--overlap",
    type=click.Choice(OVERLAP_POLICIES),
    default=DEFAULT_MANUAL_OVERLAP,
    show_default=True,
)
@json_option
def schedules_trigger(
    schedule_id: str, requested_by: str | None, request_key: str | None, overlap: str, as_json: bool
) -> None:
    """Run the schedule's graph once, now; the sensor starts it on its next tick."""
    with transaction() as conn:
        result = triggers.trigger_schedule(
            conn,
            schedule_id,
            now=now(),
            requested_by=requested_by,
            request_key=request_key,
            overlap=overlap,
        )
    emit(
        as_json,
        result,
        lambda d: (
            f"{'triggered' if d['created'] else 'already triggered'}: ledger {d['ledger_id']} "
            f"({d['status']}), key {d['idempotency_key']}"
        ),
    )


def slot_range_options(to_help: str) -> Callable[[F], F]:
    """A backfill's and a refire's options: the schedule, the range, overlap, who asks."""

    def wrap(func: F) -> F:
        for option in reversed(
            [
                click.argument("schedule_id"),
                click.option("--from", "start", required=True, help="ISO 8601 instant (inclusive)"),
                click.option("--to", "end", required=True, help=to_help),
                click.option(
                    "--overlap",
                    type=click.Choice(OVERLAP_POLICIES),
                    default=DEFAULT_MANUAL_OVERLAP,
                    show_default=True,
                ),
                click.option("--requested-by", help="Who asks for it (in the audit log)."),
                json_option,
            ]
        ):
            func = option(func)
        return func

    return wrap


@schedules.command("backfill")
@slot_range_options("ISO 8601 instant (inclusive), not after now")
def schedules_backfill(
    schedule_id: str, start: str, end: str, overlap: str, requested_by: str | None, as_json: bool
) -> None:
    """Run every slot in [--from, --to] that has not run yet, oldest first."""
    begin, finish = instant("from", start), instant("to", end)
    assert begin is not None and finish is not None
    limits = settings().schedule_limits
    with transaction() as conn:
        report = triggers.backfill_schedule(
            conn,
            schedule_id,
            start=begin,
            end=finish,
            now=now(),
            limits=limits,
            overlap=overlap,
            requested_by=requested_by,
        )
    emit(
        as_json,
        report,
        lambda d: (
            f"{d['slots']} slot(s) from {d['from']} to {d['to']}: {d['ran']} will run, "
            f"{d['already']} already had a run, {d['skipped_overlap']} skipped (overlap "
            f"{d['overlap']})"
        ),
    )


@schedules.command("refire")
@slot_range_options("ISO 8601 instant (inclusive)")
def schedules_refire(
    schedule_id: str, start: str, end: str, overlap: str, requested_by: str | None, as_json: bool
) -> None:
    """Fire the failed slots in [--from, --to] again, same key: never a second execution."""
    begin, finish = instant("from", start), instant("to", end)
    assert begin is not None and finish is not None
    with transaction() as conn:
        report = refire.refire_schedule(
            conn,
            schedule_id,
            start=begin,
            end=finish,
            now=now(),
            overlap=overlap,
            requested_by=requested_by,
        )
    emit(as_json, report, _refire_text)


def _refire_text(d: dict[str, Any]) -> str:
    lines = [
        f"{d['failed']} failed slot(s) from {d['from']} to {d['to']}: {d['refired']} will fire "
        f"again, {d['skipped_overlap']} skipped (overlap {d['overlap']})"
    ]
    for item in d["detail"]:
        if not item["refired"]:
            lines.append(f"  {item['slot']}  stays failed ({item['why']})")
            continue
        api = f"; the API answers with its run {item['api_run_id']}" if item["api_run_id"] else ""
        lines.append(f"  {item['slot']}  was {item['was']}{api}")
    return "\n".join(lines)


@schedules.command("describe")
@click.argument("schedule_id")
@json_option
def schedules_describe(schedule_id: str, as_json: bool) -> None:
    """Policies, pause, counts, runs in flight, recent actions and next fire times."""
    with transaction() as conn:
        data = describe_schedule(conn, schedule_id, now=now())
    emit(as_json, data, _describe_text)


def _reason(run: dict[str, Any]) -> str:
    """Why a slot ended as it did, on its own line's end; one line however long the message."""
    if not run["error_code"]:
        return ""
    message = bounded(run["error_message"] or "", MAX_REASON)
    return f"  reason={run['error_code']}" + (f": {message}" if message else "")


def _describe_text(d: dict[str, Any]) -> str:
    lines = [_schedule_line(d)]
    policies = d["policies"]
    lines.append("policies: " + ", ".join(f"{k}={v}" for k, v in policies.items() if v is not None))
    if d["pause"]["paused"]:
        pause = d["pause"]
        lines.append(f"paused at {pause['at']} by {pause['by']}: {pause['note'] or '(no note)'}")
    if d["last_error"]:
        lines.append(f"last error: {d['last_error']}")
    counts = d["counts"]
    lines.append(
        "counts: "
        + ", ".join(
            f"{k}={v}" for k, v in counts.items() if v is not None and not isinstance(v, dict)
        )
    )
    fires = [f"{f['fires_at']}" for f in d["next_fire_times"]]
    none = "none (paused)" if d["pause"]["paused"] else "none"
    lines.append("next fire times: " + (", ".join(fires) or none))
    for title, key in (("running", "running"), ("recent actions", "recent_actions")):
        lines.append(f"{title}:")
        for run in d[key]:
            lines.append(
                f"  {run['scheduled_for'] or run['trigger_kind']:<20}  {run['status']:<15}  "
                f"started={run['started_at'] or '-'}  dagster={run['dagster_run_id'] or '-'}  "
                f"cost_usd={run['cost_usd'] or '-'}{_reason(run)}"
            )
        if not d[key]:
            lines.append("  none")
    return "\n".join(lines)


@schedules.command("preview")
@click.option("--cron", required=True)
@click.option("--timezone", default="UTC", show_default=True)
@click.option("--from", "start", required=True, help="ISO 8601 instant; fires strictly after it")
@click.option("--count", type=click.IntRange(1, MAX_PREVIEW), default=10, show_default=True)
@json_option
def schedules_preview(cron: str, timezone: str, start: str, count: int, as_json: bool) -> None:
    """Print the next fire instants in UTC, under the daylight-saving policy."""
    after = instant("from", start)
    assert after is not None
    emit(as_json, preview_fires(cron, timezone, after, count), lambda d: "\n".join(d))
