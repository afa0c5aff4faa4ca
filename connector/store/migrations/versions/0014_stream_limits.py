"""Stream limits: an agreement's message limit and its per-period counts on the metering row.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_COLUMNS = ("max_messages", "period_start_ms", "period_messages", "period_bytes")


def upgrade() -> None:
    with op.batch_alter_table("metering") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("metering") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
