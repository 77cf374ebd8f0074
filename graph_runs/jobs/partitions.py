"""The schedule partitions and the asset whose partitions show each schedule's slots."""

import dagster as dg

SCHEDULE_PARTITIONS_NAME = "graph_run_schedules"
schedule_partitions = dg.DynamicPartitionsDefinition(name=SCHEDULE_PARTITIONS_NAME)

SLOT_ASSET_KEY = "scheduled_graph_runs"
# The slot events sensor announces one event per slot outcome on its schedule's partition
# (graph_runs/jobs/slot_events.py): a materialization when it succeeded, an observation
# otherwise. The Catalog then shows each schedule's latest outcome, whoever recorded it.
scheduled_graph_runs = dg.AssetSpec(
    SLOT_ASSET_KEY,
    partitions_def=schedule_partitions,
    description=(
        "Each schedule's slots, one partition per schedule: a materialization per "
        "succeeded slot, an observation per other outcome (failed, skipped, missed, "
        "cancelled), with its reason, cost, tokens, API run and the run that fired it."
    ),
    group_name="graph_runs",
)
