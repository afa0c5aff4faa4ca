"""Registry directory and revoked certificates.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "participant",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("signing_public_key", sa.LargeBinary(), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("certificate_thumbprint", sa.String(64), nullable=False),
        sa.Column("certificate_serial", sa.String(64), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("enrolled_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.Column("revoked_reason", sa.String(1024), nullable=True),
    )
    op.create_table(
        "revoked_certificate",
        sa.Column("serial", sa.String(64), primary_key=True),
        sa.Column("participant_id", sa.String(63), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_revoked_certificate_participant_id", "revoked_certificate", ["participant_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_revoked_certificate_participant_id", "revoked_certificate")
    op.drop_table("revoked_certificate")
    op.drop_table("participant")
