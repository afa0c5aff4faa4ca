"""Compute-to-data: computations, and ε in the agreement's metering row.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("metering") as batch:
        batch.add_column(
            sa.Column("computations", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("epsilon_spent_micro", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("epsilon_budget_micro", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "computation",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("agreement_id", sa.String(64), nullable=False),
        sa.Column("product", sa.String(63), nullable=False),
        sa.Column("counterparty", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("query_sha256", sa.String(64), nullable=False),
        sa.Column("answer_sha256", sa.String(64), nullable=False),
        sa.Column("epsilon_micro", sa.BigInteger(), nullable=False),
        sa.Column("receipt", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("started_ms", sa.BigInteger(), nullable=False),
        sa.Column("ended_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_computation_agreement_id", "computation", ["agreement_id"])
    op.create_index("ix_computation_counterparty", "computation", ["counterparty"])
    op.create_index("ix_computation_state", "computation", ["state"])


def downgrade() -> None:
    op.drop_table("computation")
    with op.batch_alter_table("metering") as batch:
        batch.drop_column("epsilon_budget_micro")
        batch.drop_column("epsilon_spent_micro")
        batch.drop_column("computations")
