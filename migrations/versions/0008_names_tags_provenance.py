"""Jobs get an optional ``name``, key/value tags (``job_tags``, one row per tag, indexed for
search) and ``provenance``: the code, libraries, device and data a run was made with.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("name", sa.String(200), nullable=True))
        batch.add_column(sa.Column("provenance", JSONType, nullable=True))
    op.create_index("ix_jobs_owner_name", "jobs", ["owner", "name"])
    op.create_table(
        "job_tags",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )
    op.create_index("ix_job_tags_key_value", "job_tags", ["key", "value"])


def downgrade() -> None:
    op.drop_index("ix_job_tags_key_value", table_name="job_tags")
    op.drop_table("job_tags")
    op.drop_index("ix_jobs_owner_name", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("provenance")
        batch.drop_column("name")
