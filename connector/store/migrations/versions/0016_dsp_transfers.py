"""Transfer processes over the Dataspace Protocol binding: the consumer's process id, its
callback address, the DSP state and the data-address token's expiry, beside the transfer.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dsp_transfer",
        sa.Column("transfer_id", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("counterparty", sa.String(63), nullable=False),
        sa.Column("peer_pid", sa.String(200), nullable=False),
        sa.Column("callback", sa.Text(), nullable=False),
        sa.Column("request_digest", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("token_expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("data_address", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    )
    # One process per peer's process id: a repeated request finds the first one's.
    op.create_index(
        "ux_dsp_transfer_peer", "dsp_transfer", ["role", "counterparty", "peer_pid"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ux_dsp_transfer_peer", "dsp_transfer")
    op.drop_table("dsp_transfer")
