"""The management API: its keys, its idempotency records and the indexes its lists page by.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

``api_keys`` holds each key's hash, never its secret. ``api_idempotency`` keeps the first
answer to a POST that carried an ``Idempotency-Key``, per API key, for 24 hours
(graph_runs/api/idempotency.py). The two indexes let ``GET /v1/schedules`` page by
``(created_at, id)``, with or without an owner, as a range scan, never an OFFSET.
"""

import sqlalchemy as sa
from alembic import op

from graph_runs.store.tables import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200)),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("revoked_at", UTCDateTime),
        sa.Column("revoked_by", sa.String(200)),
    )
    op.create_table(
        "api_idempotency",
        sa.Column("api_key_id", sa.String(40), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_api_idempotency_expires", "api_idempotency", ["expires_at"])
    op.create_index("ix_schedules_created_id", "schedules", ["created_at", "id"])
    op.create_index("ix_schedules_owner_created_id", "schedules", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_schedules_owner_created_id", "schedules")
    op.drop_index("ix_schedules_created_id", "schedules")
    op.drop_index("ix_api_idempotency_expires", "api_idempotency")
    op.drop_table("api_idempotency")
    op.drop_table("api_keys")
