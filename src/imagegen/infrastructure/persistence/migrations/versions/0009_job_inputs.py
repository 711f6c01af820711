"""job inputs: the uploaded bytes of a background edit

An edit queued for a worker keeps its uploaded image(s) and mask here, written in the
transaction that creates the generation, reserves its credits and queues the job; the queue
deletes them when the job ends.

Revision ID: 0009_job_inputs
Revises: 0008_generation_input_sizes
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_job_inputs"
down_revision = "0008_generation_input_sizes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_inputs",
        sa.Column("generation_id", sa.String(64), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("generation_id", "slot"),
        sa.ForeignKeyConstraint(["generation_id"], ["generations.id"], ondelete="CASCADE"),
    )


def downgrade() -> None:
    op.drop_table("job_inputs")
