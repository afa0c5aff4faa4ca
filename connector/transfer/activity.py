"""Transfers per day and the streams' recent rate, aggregated in the database for the
console's charts (``AdminService.TransferActivity``): a count per day, not every row, so
the answer costs the same with 100 or 1,000,000 transfers in the window's days."""

from __future__ import annotations

import time

from sqlalchemy import text

from connector._proto.tds.v1 import admin_pb2
from connector.errors import InvalidRequest
from connector.store.database import Database
from connector.transfer.store import COMPLETED

__all__ = ["DAY_MS", "RATE_WINDOW_MS", "transfer_activity"]

DAY_MS = 86_400_000
RATE_WINDOW_MS = 300_000
"""A stream's rate is that of the windows countersigned in the last five minutes."""
_STREAMS = 100
"""Subscriptions shown, most recently moved first."""
_RECENT_WINDOWS = 1_000
"""Windows of one stream looked at for its rate (the newest; a window spans many records)."""


def transfer_activity(
    db: Database, days: int, now_ms: int | None = None
) -> admin_pb2.TransferActivityResponse:
    """Transfers started per UTC day over the last ``days`` days (today included; days
    without any are zero), of them completed (with a dual-signed receipt: only then is a
    transfer completed), and the stream subscriptions with their recent rate."""
    if not 1 <= days <= 366:
        raise InvalidRequest(f"days must be 1 to 366, not {days}")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    first_day = now_ms // DAY_MS - (days - 1)
    with db.engine.connect() as conn:  # reads only: no write turn, no transaction to sync
        counted = {
            int(day): (int(started), int(completed or 0), int(completed_bytes or 0))
            for day, started, completed, completed_bytes in conn.execute(
                text(
                    # Only columns of ix_transfer_started_state (migration 0016): the
                    # index answers alone, no transfer row (and its receipt) is read.
                    "SELECT started_ms / :day AS d, count(*),"
                    " sum(CASE WHEN state = :done THEN 1 ELSE 0 END),"
                    " sum(CASE WHEN state = :done THEN size ELSE 0 END)"
                    " FROM transfer WHERE started_ms >= :since GROUP BY started_ms / :day"
                ),
                {"day": DAY_MS, "since": first_day * DAY_MS, "done": COMPLETED},
            )
        }
        subscriptions = conn.execute(
            text(
                "SELECT agreement_id, role, counterparty, product, state, next_window, messages,"
                " bytes, updated_ms FROM stream_subscription"
                " ORDER BY updated_ms DESC, agreement_id, role LIMIT :n"
            ),
            {"n": _STREAMS},
        ).all()
        streams = []
        for row in subscriptions:
            agreement, role, peer, product, state, windows, messages, size, updated = row
            recent = conn.execute(
                text(
                    "SELECT sum(count), sum(bytes) FROM stream_window WHERE agreement_id = :a"
                    " AND role = :r AND window_index >= :w AND created_ms >= :since"
                ),
                {
                    "a": agreement,
                    "r": role,
                    "w": max(0, int(windows) - _RECENT_WINDOWS),
                    "since": now_ms - RATE_WINDOW_MS,
                },
            ).first()
            recent_messages, recent_bytes = recent if recent is not None else (0, 0)
            streams.append(
                admin_pb2.StreamActivity(
                    agreement_id=agreement,
                    role=role,
                    counterparty=peer,
                    product_id=product,
                    state=state,
                    windows=int(windows),
                    messages=int(messages),
                    bytes=int(size),
                    updated_ms=int(updated),
                    recent_messages=int(recent_messages or 0),
                    recent_bytes=int(recent_bytes or 0),
                )
            )
    return admin_pb2.TransferActivityResponse(
        days=[
            admin_pb2.TransferDay(
                day_ms=day * DAY_MS,
                started=counted.get(day, (0, 0, 0))[0],
                completed=counted.get(day, (0, 0, 0))[1],
                completed_bytes=counted.get(day, (0, 0, 0))[2],
            )
            for day in range(first_day, first_day + days)
        ],
        streams=streams,
        rate_window_ms=RATE_WINDOW_MS,
    )
