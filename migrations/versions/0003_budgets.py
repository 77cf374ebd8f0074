"""Budgets: a spending limit per billing account and period.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from graph_runs.store.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "budgets" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "budgets",
        sa.Column("billing_account", sa.String(200), primary_key=True),
        sa.Column("period", sa.String(20), primary_key=True),
        sa.Column("limit_micros", sa.BigInteger, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budgets")
