"""A member's cache of the operator-signed directory (lookups while the registry is down).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "directory_cache",
        sa.Column("space", sa.String(63), primary_key=True),
        sa.Column("head", sa.Text(), nullable=False),
        sa.Column("entries", sa.Text(), nullable=False),
        sa.Column("stored_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("directory_cache")
