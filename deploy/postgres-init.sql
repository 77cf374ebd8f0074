-- The schedules database beside Dagster's own (POSTGRES_DB), on first start only.
CREATE DATABASE graph_runs OWNER dagster;
