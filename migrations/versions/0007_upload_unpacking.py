"""Uploads unpack in the background: an upload is ``unpacking``, then ``ready`` or ``failed`` with
its ``error``; ``heartbeat_at`` shows the unpacking is alive, ``unpacked_bytes`` what its files
take (counted against the owner's quota).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("unpacked_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # The older schema knows only ready uploads (and ones being deleted): the others go. Their
    # partial files in uploads/.incoming are swept once this revision is back (CSSL_UPLOAD_STALE_AFTER).
    op.execute(sa.text("DELETE FROM datasets WHERE status IN ('unpacking', 'failed')"))
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("unpacked_bytes")
        batch.drop_column("error")
