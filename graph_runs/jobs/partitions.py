"""The schedule partitions and the asset whose partitions show each schedule's slots."""

import dagster as dg

SCHEDULE_PARTITIONS_NAME = "graph_run_schedules"
schedule_partitions = dg.DynamicPartitionsDefinition(name=SCHEDULE_PARTITIONS_NAME)

SLOT_ASSET_KEY = "scheduled_graph_runs"
# Dispatch runs log one event per fired slot on its schedule's partition: a
# materialization when it succeeded, an observation otherwise. The Catalog then shows each
# schedule's latest outcome, whichever dispatch run fired it.
scheduled_graph_runs = dg.AssetSpec(
    SLOT_ASSET_KEY,
    partitions_def=schedule_partitions,
    description=(
        "Each schedule's fired slots, one partition per schedule: a materialization per "
        "succeeded slot, an observation per failed one, with its cost, tokens and API run."
    ),
    group_name="graph_runs",
)
