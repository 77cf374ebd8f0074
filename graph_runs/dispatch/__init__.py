"""Dispatch: how claimed slots fire and how their outcomes are recorded.

``batches`` groups claimed slots and leases them to a Dagster run; ``dispatcher`` runs a batch,
deciding each instant's slots in ``firing`` and calling the execution API many at once;
``ledger`` records each outcome with its receipt; ``reconcile`` settles one-slot runs from
Dagster's run statuses.
"""
