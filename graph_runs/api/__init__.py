"""The management API: schedules, grants, approvals and budgets over HTTP.

For apps in any language (docs: the README's "The HTTP API"; the contract: ``openapi.json``).

It puts HTTP in front of the Python API the CLI uses, and adds what HTTP needs: keys with
scopes and owners (``graph_runs.access.api_keys``), idempotent POSTs, ETags on schedules,
keyset pages and RFC 9457 problems.
"""
