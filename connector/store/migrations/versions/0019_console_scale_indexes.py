"""Indexes two console pages needed at scale (measured with ``bench/console.py``).

- ``transfer (state, started_ms, id)``: a consumer's holdings page (kept, completed
  transfers, newest first) was read through the index on ``state`` alone, so SQLite
  sorted every completed transfer, receipts and all, for each page: 0.9 s p50 for 20,000
  holdings. With this index the page reads its 100 rows in order.
- ``log_entry (kind, idx)``: receipts recorded since a known index (the disclosure report
  counting on from its last count) were found by the (kind, time) index over the whole
  year and then filtered by index (0.35 s p50 with 20,000 receipts in a 1,000,000-entry
  log); by kind and index they are the new entries only.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_transfer_state_started", "transfer", ["state", "started_ms", "id"])
    op.create_index("ix_log_entry_kind_idx", "log_entry", ["kind", "idx"])


def downgrade() -> None:
    op.drop_index("ix_log_entry_kind_idx", "log_entry")
    op.drop_index("ix_transfer_state_started", "transfer")
