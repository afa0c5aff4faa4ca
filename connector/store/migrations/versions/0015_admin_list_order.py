"""Indexes in the order the admin API pages negotiations and transfers (newest first) and
metering (by consumer, then agreement), and for a negotiation's transitions in the log.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A page is "the next N before this (time, id)": with the index, N rows read, not all.
    op.create_index("ix_negotiation_created", "negotiation", ["created_ms", "pid"])
    # Of one state (those waiting for approval): the page's rows, not every such row sorted.
    op.create_index("ix_negotiation_state_created", "negotiation", ["state", "created_ms", "pid"])
    op.create_index("ix_transfer_started", "transfer", ["started_ms", "id"])
    op.create_index("ix_metering_consumer_agreement", "metering", ["consumer", "agreement_id"])
    # A negotiation's transitions: the entries of one kind in its time window.
    op.create_index("ix_log_entry_kind_created", "log_entry", ["kind", "created_ms"])


def downgrade() -> None:
    op.drop_index("ix_log_entry_kind_created", "log_entry")
    op.drop_index("ix_metering_consumer_agreement", "metering")
    op.drop_index("ix_transfer_started", "transfer")
    op.drop_index("ix_negotiation_state_created", "negotiation")
    op.drop_index("ix_negotiation_created", "negotiation")
