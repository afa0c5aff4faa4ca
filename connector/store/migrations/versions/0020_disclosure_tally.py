"""The disclosure report's counts, stored (``connector/transfer/disclosure_store.py``).

The report counts a year's receipts from the provider's log (transfer, computation and
stream window receipts, each parsed and its agreement looked up). It kept those counts in
memory only, so the first report after every start read the whole year again: 6.4 s for
20,000 receipts in a 1,000,000-entry log (``bench/console.py``, quiet machine). Stored,
the connector counts on from the last stored count, and at start it does so off the
request path, so the first report reads stored counts.

No rows are written here: the counts are made by the product's own code (parsing signed
receipts, which a migration should not import), the first time by the connector when it
starts (the backfill: the year's receipts counted once, then stored); a report asked for
before that is done counts them itself, as before.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "disclosure_year",
        sa.Column("year", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("scanned", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "disclosure_count",
        sa.Column("year", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("agreement_id", sa.Text(), primary_key=True),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("consumer", sa.Text(), nullable=False),
        sa.Column("product", sa.Text(), nullable=False),
        sa.Column("registration_code", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("grant_id", sa.Text(), nullable=False),
        sa.Column("transfers", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("computations", sa.BigInteger(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("windows", sa.BigInteger(), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("stream_bytes", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "disclosure_receipt",
        sa.Column("year", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("log_index", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("agreement_id", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("disclosure_receipt")
    op.drop_table("disclosure_count")
    op.drop_table("disclosure_year")
