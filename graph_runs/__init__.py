"""graph-runs: users' scheduled AI graph runs, fired exactly once per slot through Dagster."""
