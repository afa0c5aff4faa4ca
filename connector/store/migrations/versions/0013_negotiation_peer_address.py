"""Where a negotiation's messages go when it runs over the Dataspace Protocol binding.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("negotiation") as batch:
        batch.add_column(sa.Column("peer_address", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("negotiation") as batch:
        batch.drop_column("peer_address")
