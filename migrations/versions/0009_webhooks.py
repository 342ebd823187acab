"""Webhooks: owners' endpoints (``webhooks``), the endpoints a job names (``job_webhooks``), the
outbox of events to send (``webhook_messages``) and each attempt to send one (``webhook_deliveries``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.String(500), nullable=True),
        sa.Column("events", JSONType, nullable=False),
        sa.Column("jobs", sa.String(8), nullable=False),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("created_at", Time, nullable=False),
    )
    op.create_index("ix_webhooks_owner_created_at", "webhooks", ["owner", "created_at"])
    op.create_table(
        "job_webhooks",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("webhook_id", sa.String(32), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), primary_key=True),
    )
    op.create_index("ix_job_webhooks_webhook_id", "job_webhooks", ["webhook_id"])
    op.create_table(
        "webhook_messages",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("webhook_id", sa.String(32), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Time, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("finished_at", Time, nullable=True),
    )
    op.create_index("ix_webhook_messages_status_next_attempt_at", "webhook_messages", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_messages_webhook_id_created_at", "webhook_messages", ["webhook_id", "created_at"])
    op.create_index("ix_webhook_messages_job_id", "webhook_messages", ["job_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", EventId, primary_key=True, autoincrement=True),
        sa.Column(
            "message_id", sa.String(40), sa.ForeignKey("webhook_messages.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", Time, nullable=False),
    )
    op.create_index("ix_webhook_deliveries_message_id", "webhook_deliveries", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_message_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    for index in (
        "ix_webhook_messages_job_id",
        "ix_webhook_messages_webhook_id_created_at",
        "ix_webhook_messages_status_next_attempt_at",
    ):
        op.drop_index(index, table_name="webhook_messages")
    op.drop_table("webhook_messages")
    op.drop_index("ix_job_webhooks_webhook_id", table_name="job_webhooks")
    op.drop_table("job_webhooks")
    op.drop_index("ix_webhooks_owner_created_at", table_name="webhooks")
    op.drop_table("webhooks")
