"""Where a product's data lives: one interface for every kind of source (DESIGN.md §9).

:mod:`connector.sources.base` declares the interface (record, byte and stream sources);
adapters implement it: :mod:`~connector.sources.table` (CSV / JSON Lines files) and
:mod:`~connector.sources.sql` (PostgreSQL and MariaDB queries), and for streams
:mod:`~connector.sources.nats` (JetStream subjects) and :mod:`~connector.sources.mqtt`
(MQTT topics), sharing :mod:`~connector.sources.stream`. Every record source is
delivered through :mod:`~connector.sources.delivered`.
"""

from __future__ import annotations

from connector.sources.base import (
    MISSING,
    ByteSnapshot,
    ByteSource,
    RecordSource,
    Row,
    Snapshot,
    StreamRecord,
    StreamSource,
    Subscription,
)

__all__ = [
    "MISSING",
    "ByteSnapshot",
    "ByteSource",
    "RecordSource",
    "Row",
    "Snapshot",
    "StreamRecord",
    "StreamSource",
    "Subscription",
]
