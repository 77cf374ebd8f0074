#!/bin/sh
# On the volume's first start only: the graph_runs role (no superuser, no CREATEROLE) and
# the two databases it owns, Dagster's storage and the schedules. The services connect as
# this role; the superuser's password stays with the postgres container.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v app_password="$GRAPH_RUNS_DB_PASSWORD" <<'SQL'
CREATE ROLE graph_runs LOGIN PASSWORD :'app_password';
CREATE DATABASE dagster OWNER graph_runs;
CREATE DATABASE graph_runs OWNER graph_runs;
SQL
