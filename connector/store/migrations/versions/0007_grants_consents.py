"""Authorised-operation grants (operator), consents (individuals), contract terms.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operation_grant",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("participant", sa.String(63), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_ns", sa.BigInteger(), nullable=False),
        sa.Column("issued_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_reason", sa.String(1024), nullable=False),
    )
    op.create_index("ix_operation_grant_participant", "operation_grant", ["participant"])
    op.create_table(
        "consent",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("recipient", sa.String(63), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
        sa.Column("expires_ns", sa.BigInteger(), nullable=False),
        sa.Column("granted_ms", sa.BigInteger(), nullable=False),
        sa.Column("withdrawn_ms", sa.BigInteger(), nullable=False),
        sa.Column("withdrawal", sa.Text(), nullable=True),
    )
    op.create_index("ix_consent_recipient", "consent", ["recipient"])
    with op.batch_alter_table("negotiation") as batch:
        batch.add_column(sa.Column("terms", sa.Text(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("negotiation") as batch:
        batch.drop_column("terms")
    op.drop_table("consent")
    op.drop_table("operation_grant")
