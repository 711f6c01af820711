"""every provider job of a generation

A request split into several provider calls (n above the model's per-call limit) has one
job per call; all of them are kept so a crashed process can resume each.

Revision ID: 0003_provider_job_ids
Revises: 0002_generation_quality
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_provider_job_ids"
down_revision = "0002_generation_quality"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_job_ids", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_column("provider_job_ids")
