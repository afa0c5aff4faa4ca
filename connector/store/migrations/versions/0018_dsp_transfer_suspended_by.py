"""Who suspended a DSP transfer process: the side that suspended it resumes it.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "dsp_transfer",
        sa.Column("suspended_by", sa.String(16), nullable=False, server_default=""),
    )


def downgrade() -> None:
    with op.batch_alter_table("dsp_transfer") as batch:
        batch.drop_column("suspended_by")
