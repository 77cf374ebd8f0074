"""The dispatch job: one Dagster run fires a batch of slots, each at its instant.

Two jobs share the one op. ``graph_run_job`` is partitioned by schedule: a batch of one
scheduled slot runs there, on its schedule's partition, as do an approved slot and a
partition run launched from the UI (a trigger-now of that schedule). ``dispatch_batch_job``
runs batches of many slots, which belong to no one partition; each slot then shows on its
schedule's partition of the ``scheduled_graph_runs`` asset instead.
"""

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg

from graph_runs.core.errors import Conflict, InvalidInput, NotFound
from graph_runs.core.ledger_rows import slot_label
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.dispatch.batches import BATCH_ATTEMPT_TAG, BATCH_ID_TAG
from graph_runs.dispatch.dispatcher import Dispatcher, Recorded, Report, summary
from graph_runs.dispatch.firing import Firing
from graph_runs.jobs.partitions import schedule_partitions
from graph_runs.jobs.single import GraphRunRequest, checked_body, start_single
from graph_runs.resources import (
    ClockResource,
    DatabaseResource,
    DispatchResource,
    ExecutionApiResource,
    GrantsResource,
    ScheduleLimitsResource,
)

MAX_SLOTS_LISTED = 500
# Dagster tags a re-executed run with the run it re-executes.
PARENT_RUN_ID_TAG = "dagster/parent_run_id"
MAX_FAILED_NAMED = 20


def _label(row: Any) -> str:
    slot = slot_label(row)
    return f"{row.schedule_id or '-'}@{slot}"


def _slot_metadata(done: Recorded) -> dict[str, Any]:
    row, recorded = done.row, done.recorded
    return {
        "slot": slot_label(row),
        "status": recorded["status"],
        "cost_usd": recorded.get("cost_usd") or "0",
        "tokens": recorded.get("total_tokens") or 0,
        "api_run_id": recorded.get("api_run_id") or "",
        "ledger_id": row.id,
        "error": done.outcome.error_code or "",
    }


def _logged(context: dg.OpExecutionContext, done: list[Recorded]) -> None:
    """The run's log line for slots just recorded.

    Their events on the schedules' partitions come from the slot events sensor
    (``graph_runs.jobs.slot_events``), so that firing spends no time on them.
    """
    counts: dict[str, int] = {}
    for item in done:
        counts[item.recorded["status"]] = counts.get(item.recorded["status"], 0) + 1
    listed = ", ".join(f"{_label(i.row)} {i.recorded['status']}" for i in done[:20])
    more = f" and {len(done) - 20} more" if len(done) > 20 else ""
    context.log.info(
        f"recorded {len(done)} slot(s) ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))})"
        f": {listed}{more}"
    )


def _slot_table(report: Report) -> str:
    lines = [
        "| slot | schedule | status | cost USD | tokens | API run | ledger |",
        "|---" * 7 + "|",
    ]
    for item in report.recorded[:MAX_SLOTS_LISTED]:
        m = _slot_metadata(item)
        lines.append(
            f"| {m['slot']} | {item.row.schedule_id or '-'} | {m['status']} {m['error']} | "
            f"{m['cost_usd']} | {m['tokens']} | {m['api_run_id']} | {m['ledger_id']} |"
        )
    if len(report.recorded) > MAX_SLOTS_LISTED:
        lines.append(f"| and {len(report.recorded) - MAX_SLOTS_LISTED} more | | | | | | |")
    return "\n".join(lines)


def _single_firing(
    context: dg.OpExecutionContext,
    config: GraphRunRequest,
    database: DatabaseResource,
    grants: GrantsResource,
    clock: ClockResource,
    limits: ScheduleLimits,
) -> tuple[list[Firing], list[Recorded]]:
    """The one slot of a run launched with a ledger row (approved) or for a partition."""
    try:
        row = start_single(context, config, database, grants, clock, limits)
    except (Conflict, NotFound, InvalidInput) as exc:
        raise dg.Failure(description=str(exc)) from None
    return _checked(context, database, clock, row)


def _checked(
    context: dg.OpExecutionContext,
    database: DatabaseResource,
    clock: ClockResource,
    row: Any,
) -> tuple[list[Firing], list[Recorded]]:
    """The slot, started in this run, if its grant allows it; else its recorded failure."""
    try:
        body = checked_body(context, database, clock, row)
    except dg.Failure as refused:
        # Recorded failed by the check: an outcome like any other, shown on its partition;
        # the run itself did its work.
        code = str(refused.metadata["error_code"].value) if refused.metadata else "grant_denied"
        recorded = Recorded.refused(row, code, refused.description, 1)
        _logged(context, [recorded])
        return [], [recorded]
    return ([] if body is None else [Firing(row, body)]), []


@dg.op(
    description=(
        "Fire a batch of slots, each at its instant, through the execution API; record each "
        "outcome and receipt as it finishes, holding the batch's lease meanwhile."
    ),
    out=dg.Out(dict),
)
def dispatch_slots(
    context: dg.OpExecutionContext,
    config: GraphRunRequest,
    database: DatabaseResource,
    grants: GrantsResource,
    execution_api: ExecutionApiResource,
    clock: ClockResource,
    dispatch: DispatchResource,
    schedule_limits: ScheduleLimitsResource,
) -> dg.Output[dict[str, Any]]:
    """Succeed once every slot it fired has its outcome recorded, whatever the outcomes.

    Fails, naming them, only when slots were left without an outcome: dispatch failed.
    """
    now_fn, sleep = clock.timer()
    dispatcher = Dispatcher(
        database.engine(),
        execution_api.concurrent_caller(
            dispatch.max_concurrent_calls, dispatch.max_calls_per_account
        ),
        dagster_run_id=context.run_id,
        clock=now_fn,
        sleep=sleep,
        limits=dispatch.limits(),
        on_recorded=lambda done: _logged(context, done),
    )
    batch_id = context.run.tags.get(BATCH_ID_TAG)
    if batch_id:
        attempt = int(context.run.tags.get(BATCH_ATTEMPT_TAG, "1"))
        report = asyncio.run(dispatcher.run_batch(batch_id, attempt))
        if report.replaced:
            again = (
                "; a re-execution fires no slot again: `graph-runs schedules refire` does"
                if context.run.tags.get(PARENT_RUN_ID_TAG)
                else ""
            )
            context.log.warning(
                f"batch {batch_id} has moved past attempt {attempt} or is done; this run "
                f"fires nothing{again}"
            )
    else:
        firings, refused = _single_firing(
            context,
            config,
            database,
            grants,
            clock,
            schedule_limits.limits(),
        )
        report = asyncio.run(dispatcher.run_started(firings)) if firings else Report()
        report.recorded.extend(refused)
    context.log.info(summary(report))
    metadata: dict[str, Any] = {
        "fired": report.fired if batch_id else len(report.recorded),
        "statuses": dg.MetadataValue.json(dict(report.statuses)),
        "slots": dg.MetadataValue.md(_slot_table(report)),
        "unrecorded": len(report.unrecorded),
        "handed_off": len(report.handed_off),
        "first_fired_lag_seconds": report.first_fired_lag or 0.0,
    }
    failed = report.failed
    named = ", ".join(
        f"{_label(i.row)} ({i.outcome.error_code}: {i.outcome.error_message})"
        for i in failed[:MAX_FAILED_NAMED]
    )
    more = f" and {len(failed) - MAX_FAILED_NAMED} more" if len(failed) > MAX_FAILED_NAMED else ""
    failures = f"{len(failed)} slot(s) failed: {named}{more}" if failed else "no slot failed"
    if report.unrecorded:
        # Dispatch itself failed: these slots have no outcome, and the sensor dispatches
        # them again. The run is red for this alone.
        raise dg.Failure(
            description=(
                f"{len(report.unrecorded)} slot(s) have no outcome yet and are dispatched "
                f"again; {failures}"
            ),
            metadata=metadata,
        )
    if failed:
        # A slot's failure is its outcome, recorded and shown on its schedule's partition:
        # one user's failed slot does not turn a run that served others red.
        context.log.warning(failures)
    return dg.Output(
        {
            "statuses": dict(report.statuses),
            "recorded": [i.recorded for i in report.recorded[:MAX_SLOTS_LISTED]],
            "failed": [i.recorded for i in failed[:MAX_SLOTS_LISTED]],
        },
        metadata=metadata,
    )


# The sensor retries a dispatch run itself (the batch's next attempt, fenced by its lease);
# a run retry by Dagster as well would be a second run of the same attempt.
NO_RUN_RETRIES = {"dagster/max_retries": "0"}


@dg.graph
def dispatch() -> None:
    """Fire slots at their instant and record them."""
    dispatch_slots()


def make_graph_run_job(
    partition_tags: Callable[[str], Mapping[str, str]] | None = None,
) -> dg.JobDefinition:
    """``graph_run_job``, whose UI launches get ``partition_tags`` (``partition_tags.py``).

    The definitions pass the tags read from their own database; without them (the
    module's ``graph_run_job``, which tests run directly) a launch carries only the tags
    its caller gives.
    """
    config = dg.PartitionedConfig(
        partitions_def=schedule_partitions,
        run_config_for_partition_key_fn=lambda _key: {},
        tags_for_partition_key_fn=partition_tags,
    )
    return dispatch.to_job(
        name="graph_run_job",
        description=(
            "A batch of one slot of a user schedule (one partition per schedule), an approved "
            "slot, or a trigger-now launched from the UI for a partition."
        ),
        config=config,
        executor_def=dg.in_process_executor,
        tags=NO_RUN_RETRIES,
    )


graph_run_job = make_graph_run_job()

dispatch_batch_job = dispatch.to_job(
    name="dispatch_batch_job",
    description=(
        "A batch of many scheduled slots, each fired at its instant (run key batch:{id}:{attempt})."
    ),
    executor_def=dg.in_process_executor,
    tags=NO_RUN_RETRIES,
)
