"""The operator's catalog index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_listing",
        sa.Column("provider", sa.String(63), primary_key=True),
        sa.Column("product_id", sa.String(63), primary_key=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("registration_code", sa.String(64), nullable=False),
        sa.Column("registered_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("catalog_listing")
