"""Scheduling: a schedule's lifecycle and the claim of its due slots.

``schedules`` is the Python API users call (create, upsert, update, pause, resume, delete);
``claim`` turns due instants into ledger rows, exactly once; ``triggers`` adds trigger-now and
backfill slots; ``in_flight`` answers which slots of a schedule are running; ``describe`` and
``revocation`` read and act across them.
"""
