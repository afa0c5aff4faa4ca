"""Negotiations, the outbox and the inbox.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "negotiation",
        sa.Column("pid", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("counterparty", sa.String(63), nullable=False),
        sa.Column("counterparty_pid", sa.String(64), nullable=False),
        sa.Column("product", sa.String(63), nullable=False),
        sa.Column("offer", sa.String(63), nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("agreement_id", sa.String(64), nullable=True),
        sa.Column("agreement", sa.Text(), nullable=True),
        sa.Column("revocation", sa.Text(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_negotiation_counterparty", "negotiation", ["counterparty"])
    op.create_index("ix_negotiation_state", "negotiation", ["state"])
    op.create_index("ix_negotiation_agreement_id", "negotiation", ["agreement_id"])
    # A consumer's process id names one negotiation per provider: repeats are idempotent.
    op.create_index(
        "ux_negotiation_counterparty_pid",
        "negotiation",
        ["role", "counterparty", "counterparty_pid"],
        unique=True,
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(64), nullable=False, unique=True),
        sa.Column("target", sa.String(63), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("negotiation_pid", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_error", sa.String(1024), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_outbox_next_attempt_ms", "outbox", ["next_attempt_ms"])
    op.create_index("ix_outbox_status", "outbox", ["status"])
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("sender", sa.String(63), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inbox")
    op.drop_table("outbox")
    op.drop_table("negotiation")
