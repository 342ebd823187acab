"""Fault tolerance: gap-free event streams, one metric point per step, retries that count
only attempts without progress.

- ``jobs.event_seq`` and ``job_events.seq``: each job's events are numbered 1, 2, 3, ... by an
  UPDATE of the job's row, whose lock is held until the event's transaction commits, so the
  events of one job become visible in the order of their numbers (a stream that follows
  ``seq > n`` cannot skip one that commits late, as it could with the table-wide id).
- ``metric_points (job_id, step)`` unique: a resumed attempt's point replaces the dead one's.
- ``jobs.resumed_from_step`` (the checkpoint step an attempt started from) and
  ``jobs.stalled_attempts`` (attempts lost without a new checkpoint): only those count
  towards ``CSSL_MAX_ATTEMPTS``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("event_seq", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("resumed_from_step", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("stalled_attempts", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    # Existing events are numbered in id order, and each job's counter set to its last number.
    op.execute(
        "UPDATE job_events SET seq = (SELECT COUNT(*) FROM job_events AS e "
        "WHERE e.job_id = job_events.job_id AND e.id <= job_events.id)"
    )
    op.execute("UPDATE jobs SET event_seq = (SELECT COALESCE(MAX(seq), 0) FROM job_events WHERE job_id = jobs.id)")
    with op.batch_alter_table("job_events") as batch:
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("uq_job_events_job_id_seq", ["job_id", "seq"])
    # Keep the newest point of each step before the constraint.
    op.execute("DELETE FROM metric_points WHERE id NOT IN (SELECT MAX(id) FROM metric_points GROUP BY job_id, step)")
    with op.batch_alter_table("metric_points") as batch:
        batch.create_unique_constraint("uq_metric_points_job_id_step", ["job_id", "step"])


def downgrade() -> None:
    with op.batch_alter_table("metric_points") as batch:
        batch.drop_constraint("uq_metric_points_job_id_step", type_="unique")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_constraint("uq_job_events_job_id_seq", type_="unique")
        batch.drop_column("seq")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("stalled_attempts")
        batch.drop_column("resumed_from_step")
        batch.drop_column("event_seq")
