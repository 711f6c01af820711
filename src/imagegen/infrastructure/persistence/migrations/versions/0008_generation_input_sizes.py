"""generation input sizes

The sizes of the images an edit sent, so a resumed edit prices its provider cost with the
input megapixels as the original process did.

Revision ID: 0008_generation_input_sizes
Revises: 0007_webhooks
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_generation_input_sizes"
down_revision = "0007_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (no batch rebuild): SQLite refuses to rebuild a table other rows
    # reference once it holds data.
    op.add_column("generations", sa.Column("input_sizes", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("generations", "input_sizes")
