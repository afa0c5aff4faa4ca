"""Transparency log: entries, Merkle nodes, checkpoints, witness state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_entry",
        sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("parties", sa.String(1024), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_log_entry_kind", "log_entry", ["kind"])
    op.create_table(
        "log_node",
        # level << 48 | index of the complete subtree (one integer key: fast IN lookups)
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "log_checkpoint",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_log_checkpoint_size", "log_checkpoint", ["size"])
    op.create_table(
        "witness_state",
        sa.Column("origin", sa.String(255), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("witness_state")
    op.drop_index("ix_log_checkpoint_size", "log_checkpoint")
    op.drop_table("log_checkpoint")
    op.drop_table("log_node")
    op.drop_index("ix_log_entry_kind", "log_entry")
    op.drop_table("log_entry")
