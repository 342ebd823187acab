"""An evaluation may have no accuracy: the embedding protocol's result is a picture (its points
in ``extra``), so ``top1`` may be null.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.alter_column("top1", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    # The results without an accuracy (embeddings) have no place in the older schema.
    op.execute(sa.text("DELETE FROM evaluations WHERE top1 IS NULL"))
    with op.batch_alter_table("evaluations") as batch:
        batch.alter_column("top1", existing_type=sa.Float(), nullable=False)
