"""Looking up Dagster runs in batches: by a tag (the approval or dispatch batch they run), or by id.

Both sensors match ledger rows to Dagster runs; one query per row would make a tick's cost
follow the rows it looks at times the storage's round trip.
"""

import dagster as dg

from graph_runs.dispatch.batches import BATCH_RUN_KEY_TAG

RUN_LOOKUP_CHUNK = 500
# A run the daemon created but never submitted (it died in between) is NOT_STARTED and never
# starts by itself; requesting it again with the same run key makes the daemon submit it.
SUBMITTED = [status for status in dg.DagsterRunStatus if status != dg.DagsterRunStatus.NOT_STARTED]


def _submitted_runs_by_tag(
    instance: dg.DagsterInstance, tag: str, values: list[str]
) -> dict[str, str]:
    """Submitted Dagster runs' ids by the value of ``tag``, looked up in batches, not per value."""
    found: dict[str, str] = {}
    for start in range(0, len(values), RUN_LOOKUP_CHUNK):
        chunk = values[start : start + RUN_LOOKUP_CHUNK]
        records = instance.get_run_records(dg.RunsFilter(tags={tag: chunk}, statuses=SUBMITTED))
        for record in records:
            value = record.dagster_run.tags.get(tag)
            if value:
                found.setdefault(value, record.dagster_run.run_id)
    return found


def existing_runs_tagged(
    instance: dg.DagsterInstance, tag: str, values: list[str]
) -> dict[str, str]:
    """Submitted Dagster runs' ids by the value of ``tag``."""
    return _submitted_runs_by_tag(instance, tag, values)


def existing_batch_runs(instance: dg.DagsterInstance, run_keys: list[str]) -> dict[str, str]:
    """Submitted Dagster runs' ids by batch run key."""
    return _submitted_runs_by_tag(instance, BATCH_RUN_KEY_TAG, run_keys)


def run_statuses(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, str]:
    """Dagster run statuses by run id, in batches; a deleted run is absent."""
    statuses: dict[str, str] = {}
    for start in range(0, len(run_ids), RUN_LOOKUP_CHUNK):
        chunk = run_ids[start : start + RUN_LOOKUP_CHUNK]
        for record in instance.get_run_records(dg.RunsFilter(run_ids=chunk)):
            statuses[record.dagster_run.run_id] = record.dagster_run.status.value
    return statuses
