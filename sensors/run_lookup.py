"""Looking up Dagster runs in batches: by the ledger row or dispatch batch they run, or by id.

Both sensors match ledger rows to Dagster runs; one query per row would make a tick's cost
follow the rows it looks at times the storage's round trip.
"""

import dagster as dg

from graph_runs import ledger
from graph_runs.batches import BATCH_RUN_KEY_TAG

RUN_LOOKUP_CHUNK = 500
# A run the daemon created but never submitted (it died in between) is NOT_STARTED and never
# starts by itself; requesting it again with the same run key makes the daemon submit it.
SUBMITTED = [status for status in dg.DagsterRunStatus if status != dg.DagsterRunStatus.NOT_STARTED]


def existing_runs(instance: dg.DagsterInstance, ledger_ids: list[str]) -> dict[str, str]:
    """Submitted Dagster runs' ids by ledger id, looked up in batches by tag, not per row."""
    found: dict[str, str] = {}
    for start in range(0, len(ledger_ids), RUN_LOOKUP_CHUNK):
        chunk = ledger_ids[start : start + RUN_LOOKUP_CHUNK]
        records = instance.get_run_records(
            dg.RunsFilter(tags={ledger.LEDGER_ID_TAG: chunk}, statuses=SUBMITTED)
        )
        for record in records:
            ledger_id = record.dagster_run.tags.get(ledger.LEDGER_ID_TAG)
            if ledger_id:
                found.setdefault(ledger_id, record.dagster_run.run_id)
    return found


def run_statuses(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, str]:
    """Dagster run statuses by run id, in batches; a deleted run is absent."""
    statuses: dict[str, str] = {}
    for start in range(0, len(run_ids), RUN_LOOKUP_CHUNK):
        chunk = run_ids[start : start + RUN_LOOKUP_CHUNK]
        for record in instance.get_run_records(dg.RunsFilter(run_ids=chunk)):
            statuses[record.dagster_run.run_id] = record.dagster_run.status.value
    return statuses


def existing_batch_runs(instance: dg.DagsterInstance, run_keys: list[str]) -> dict[str, str]:
    """Submitted Dagster runs' ids by batch run key, looked up in batches by tag."""
    found: dict[str, str] = {}
    for start in range(0, len(run_keys), RUN_LOOKUP_CHUNK):
        chunk = run_keys[start : start + RUN_LOOKUP_CHUNK]
        records = instance.get_run_records(
            dg.RunsFilter(tags={BATCH_RUN_KEY_TAG: chunk}, statuses=SUBMITTED)
        )
        for record in records:
            key = record.dagster_run.tags.get(BATCH_RUN_KEY_TAG)
            if key:
                found.setdefault(key, record.dagster_run.run_id)
    return found
