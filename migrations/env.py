"""Alembic environment: migrations run on the engine given by ``graph-runs db upgrade``."""

from alembic import context

from graph_runs.store.tables import metadata

engine = context.config.attributes.get("engine")
if engine is None:
    raise RuntimeError("run migrations with `graph-runs db upgrade`, which supplies the engine")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        # One transaction per file: a migration with an autocommit block (a concurrent
        # index build) commits what ran before it, so each file must stand on its own.
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
