"""Pure logic: cron and time zones, policies, slot planning, validation, ledger rows, money.

Nothing here touches a database, the network, Dagster or the command line (import-linter
checks it in ``make test``), so every rule is tested at exact instants in milliseconds.
"""
