"""Money: per-account budgets and the spend report over charge receipts.

Receipts themselves are written where an outcome is recorded (``graph_runs.dispatch.ledger``),
in the same transaction as the slot's final status, so that no paid run lacks one.
"""
