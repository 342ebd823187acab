"""A fleet of workers: what each job asks for (``jobs.resources``) and what each running
worker offers (``workers``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("resources", JSONType, nullable=True))
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("queues", JSONType, nullable=False),
        sa.Column("devices", JSONType, nullable=False),
        sa.Column("memory_gib", sa.Float(), nullable=True),
        sa.Column("started_at", Time, nullable=False),
        sa.Column("heartbeat_at", Time, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("resources")
