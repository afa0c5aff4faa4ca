"""Each side's record of the stream under an agreement, its windows, and stream metering.

One :class:`StreamState` row per (agreement, role): STARTED while a subscription runs,
SUSPENDED between subscriptions, TERMINATED for good; and where the chain resumes (the last
countersigned window's last sequence, head and the next window's index). Windows are kept
with their countersigned receipts. Recording a window and moving the resume point happen in
one transaction, and only from the resume point the window starts at: two subscriptions of
one agreement (two replicas) cannot both record a window, so the chain never forks.

Metering adds each message to the agreement's ``metering`` row (messages and bytes, the
same bytes copies count, and the messages and bytes of the current period) in one
conditional UPDATE that never passes any of the agreement's limits (``StreamLimits``), so
they hold across concurrent subscriptions and replicas sharing PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import CursorResult, case, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from connector.catalog.products import PERIODS
from connector.errors import NotFound, PreconditionFailed
from connector.negotiation.agreement import Agreement
from connector.sources.windows import Window
from connector.store.database import Database
from connector.store.models import MeteringRow, StreamSubscriptionRow, StreamWindowRow
from connector.transfer.store import LogWrite

__all__ = [
    "NEXT_PERIOD",
    "PERIOD_REASONS",
    "StreamLimits",
    "StreamState",
    "StreamStore",
    "StreamUsage",
]

STARTED = "STARTED"
SUSPENDED = "SUSPENDED"
TERMINATED = "TERMINATED"

MESSAGE_LIMIT = "message_limit_reached"
BYTE_LIMIT = "byte_limit_reached"
PERIOD_MESSAGE_LIMIT = "period_message_limit_reached"
PERIOD_BYTE_LIMIT = "period_byte_limit_reached"
PERIOD_REASONS = frozenset({PERIOD_MESSAGE_LIMIT, PERIOD_BYTE_LIMIT})
"""Limits that lift when the next period starts: a stream stopped by them is SUSPENDED,
not TERMINATED (the usage policy refuses a new subscription until then)."""
NEXT_PERIOD = "subscribe again in the next period"
"""Ends the provider's message when only a per-period limit stopped the stream, so the
consumer keeps it SUSPENDED too."""


@dataclass(frozen=True)
class StreamLimits:
    """An agreement's limits on what its stream delivers (0: that one has none)."""

    max_bytes: int = 0
    max_messages: int = 0
    period_seconds: int = 0
    period_max_messages: int = 0
    period_max_bytes: int = 0

    @classmethod
    def of(cls, agreement: Agreement) -> StreamLimits:
        """The limits the agreement's terms set."""
        per = agreement.per_period or {}
        if per and per.get("period") not in PERIODS:
            # Never from this connector's own negotiator, which takes validated offers.
            raise PreconditionFailed(
                f"agreement {agreement.id} limits an unknown period {per.get('period')!r}"
            )
        return cls(
            max_bytes=agreement.max_bytes,
            max_messages=agreement.max_messages,
            period_seconds=PERIODS[per["period"]] if per else 0,
            period_max_messages=int(per.get("max_messages", 0)),
            period_max_bytes=int(per.get("max_bytes", 0)),
        )

    def period_start_ms(self, now_ms: int) -> int:
        """Start of the period ``now_ms`` is in (0 without per-period limits)."""
        if not self.period_seconds:
            return 0
        return now_ms - now_ms % (self.period_seconds * 1000)


@dataclass(frozen=True)
class StreamUsage:
    """What metering counts under an agreement: in all, and in the current period."""

    messages: int = 0
    bytes: int = 0
    period_messages: int = 0
    period_bytes: int = 0

    def less(self, messages: int, size: int) -> StreamUsage:
        """This usage without ``messages`` messages of ``size`` bytes counted ahead."""
        return StreamUsage(
            max(0, self.messages - messages),
            max(0, self.bytes - size),
            max(0, self.period_messages - messages),
            max(0, self.period_bytes - size),
        )

    def refusal(self, limits: StreamLimits, messages: int, size: int) -> str | None:
        """The limit ``messages`` more messages of ``size`` bytes would pass, if any."""
        checks = (
            (limits.max_messages, self.messages + messages, MESSAGE_LIMIT),
            (limits.max_bytes, self.bytes + size, BYTE_LIMIT),
            (limits.period_max_messages, self.period_messages + messages, PERIOD_MESSAGE_LIMIT),
            (limits.period_max_bytes, self.period_bytes + size, PERIOD_BYTE_LIMIT),
        )
        return next((reason for limit, wanted, reason in checks if 0 < limit < wanted), None)


@dataclass(frozen=True)
class StreamState:
    """One side's stream under one agreement."""

    agreement_id: str
    role: str
    counterparty: str
    product: str
    state: str
    reason: str
    acked_sequence: int
    acked_head: str
    next_window: int
    messages: int
    bytes: int
    path: str = ""
    obligations: Mapping[str, Any] = field(default_factory=dict)
    updated_ms: int = 0
    deleted_ms: int = 0


def _state(row: StreamSubscriptionRow) -> StreamState:
    return StreamState(
        agreement_id=row.agreement_id,
        role=row.role,
        counterparty=row.counterparty,
        product=row.product,
        state=row.state,
        reason=row.reason,
        acked_sequence=row.acked_sequence,
        acked_head=row.acked_head,
        next_window=row.next_window,
        messages=row.messages,
        bytes=row.bytes,
        path=row.path,
        obligations=json.loads(row.obligations),
        updated_ms=row.updated_ms,
        deleted_ms=row.deleted_ms,
    )


def _window(row: StreamWindowRow) -> Window:
    return Window(
        row.window_index,
        row.first_sequence,
        row.last_sequence,
        row.count,
        row.bytes,
        row.start_head,
        row.head,
    )


class StreamStore:
    """Stream states and windows of both roles, and the provider's stream metering."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, agreement_id: str, role: str) -> StreamState:
        """The stream of ``agreement_id`` on this side, or ``NotFound``."""
        with self._db.session() as s:
            row = s.get(StreamSubscriptionRow, (agreement_id, role))
            if row is None:
                raise NotFound(f"no stream under agreement {agreement_id!r}")
            return _state(row)

    def all(self, role: str | None = None) -> list[StreamState]:
        """Every stream of this connector (of ``role`` if given)."""
        with self._db.session() as s:
            query = select(StreamSubscriptionRow)
            if role is not None:
                query = query.where(StreamSubscriptionRow.role == role)
            return [_state(r) for r in s.exec(query).all()]

    def ensure(
        self,
        agreement_id: str,
        role: str,
        *,
        counterparty: str,
        product: str,
        genesis: str,
        now_ms: int,
        path: str = "",
        obligations: Mapping[str, Any] | None = None,
    ) -> StreamState:
        """The stream's row, created SUSPENDED at the chain's genesis if there is none."""
        try:
            with self._db.session() as s:
                if s.get(StreamSubscriptionRow, (agreement_id, role)) is None:
                    s.add(
                        StreamSubscriptionRow(
                            agreement_id=agreement_id,
                            role=role,
                            counterparty=counterparty,
                            product=product,
                            state=SUSPENDED,
                            acked_head=genesis,
                            path=path,
                            obligations=json.dumps(dict(obligations or {}), sort_keys=True),
                            updated_ms=now_ms,
                        )
                    )
        except IntegrityError:
            pass  # a concurrent subscription created it
        return self.get(agreement_id, role)

    def set_state(self, agreement_id: str, role: str, state: str, reason: str, now_ms: int) -> None:
        """Move to ``state``; a TERMINATED stream stays so.

        One conditional ``UPDATE``, not a read and then a write: a subscription's end
        (SUSPENDED) racing its consumer's stop (TERMINATED), on two threads or replicas,
        could otherwise read the row before the stop commits and write over it after.
        """
        c = StreamSubscriptionRow.__table__.c  # type: ignore[attr-defined]
        with self._db.session() as s:
            s.execute(
                update(StreamSubscriptionRow.__table__)  # type: ignore[attr-defined]
                .where(c.agreement_id == agreement_id)
                .where(c.role == role)
                .where(c.state != TERMINATED)
                .values(state=state, reason=reason[:512], updated_ms=now_ms)
            )

    def terminate(
        self,
        agreement_id: str,
        role: str,
        reason: str,
        now_ms: int,
        log: LogWrite,
    ) -> bool:
        """Move to TERMINATED and append ``log``'s entries in the same transaction, only if
        the stream is not TERMINATED already; whether this call did it.

        Two stops at once (the admin and the consumer, two replicas) each read a stream
        that was still running: one conditional ``UPDATE`` decides which of them stops it,
        so the log says ``stream.terminated`` once.
        """
        with self._db.transaction() as tx:
            cur = tx.execute(
                "UPDATE stream_subscription SET state = ?, reason = ?, updated_ms = ?"
                " WHERE agreement_id = ? AND role = ? AND state != ?",
                (TERMINATED, reason[:512], now_ms, agreement_id, role, TERMINATED),
            )
            won = bool(cur.rowcount == 1)
            cur.close()
            if won:
                log(tx)
        return won

    def set_obligations(self, agreement_id: str, role: str, obligations: Mapping[str, Any]) -> None:
        """Keep the holding under ``obligations`` (the provider's decision, checked)."""
        with self._db.session() as s:
            row = s.get(StreamSubscriptionRow, (agreement_id, role))
            if row is not None:
                row.obligations = json.dumps(dict(obligations), sort_keys=True)

    def mark_deleted(self, agreement_id: str, role: str, now_ms: int) -> None:
        """Record that the holding was deleted."""
        with self._db.session() as s:
            row = s.get(StreamSubscriptionRow, (agreement_id, role))
            if row is not None:
                row.deleted_ms = now_ms

    def acknowledge(
        self, agreement_id: str, role: str, window: Window, receipt: str, now_ms: int
    ) -> None:
        """Record a countersigned window and resume after it; ``PreconditionFailed`` if the
        stream's resume point is no longer the window's start (another subscription moved
        it)."""
        c = StreamSubscriptionRow.__table__.c  # type: ignore[attr-defined]
        with self._db.session() as s:
            result: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                update(StreamSubscriptionRow.__table__)  # type: ignore[attr-defined]
                .where(c.agreement_id == agreement_id)
                .where(c.role == role)
                .where(c.next_window == window.index)
                .where(c.acked_head == window.start_head)
                .values(
                    acked_sequence=window.last_sequence,
                    acked_head=window.head,
                    next_window=window.index + 1,
                    messages=c.messages + window.count,
                    bytes=c.bytes + window.bytes,
                    updated_ms=now_ms,
                )
            )
            if result.rowcount != 1:
                s.rollback()
                raise PreconditionFailed(
                    f"window {window.index} of agreement {agreement_id} does not follow the "
                    "last acknowledged window (another subscription of the agreement ran)"
                )
            s.add(
                StreamWindowRow(
                    agreement_id=agreement_id,
                    role=role,
                    window_index=window.index,
                    first_sequence=window.first_sequence,
                    last_sequence=window.last_sequence,
                    count=window.count,
                    bytes=window.bytes,
                    start_head=window.start_head,
                    head=window.head,
                    receipt=receipt,
                    created_ms=now_ms,
                )
            )

    def windows(self, agreement_id: str, role: str) -> list[tuple[Window, str]]:
        """The countersigned windows of a stream, in order, with their receipts."""
        with self._db.session() as s:
            rows = s.exec(
                select(StreamWindowRow)
                .where(StreamWindowRow.agreement_id == agreement_id)
                .where(StreamWindowRow.role == role)
                .order_by(StreamWindowRow.window_index)  # type: ignore[arg-type]
            ).all()
            return [(_window(r), r.receipt) for r in rows]

    def windows_after(
        self, agreement_id: str, role: str, after_sequence: int, limit: int
    ) -> list[tuple[Window, str]] | None:
        """The countersigned windows that follow the one ending at ``after_sequence`` (0:
        from the first window), in order, at most ``limit``; ``None`` when no window ends
        there (``after_sequence`` is not where a window ended)."""
        with self._db.session() as s:
            rows = s.exec(
                select(StreamWindowRow)
                .where(StreamWindowRow.agreement_id == agreement_id)
                .where(StreamWindowRow.role == role)
                .where(StreamWindowRow.last_sequence >= after_sequence)
                .order_by(StreamWindowRow.window_index)  # type: ignore[arg-type]
                .limit(limit + 1)
            ).all()
            if after_sequence == 0:
                if rows and rows[0].window_index != 0:
                    return None
            elif not rows or rows[0].last_sequence != after_sequence:
                return None
            else:
                rows = rows[1:]
            return [(_window(r), r.receipt) for r in rows[:limit]]

    # -- provider: metering -------------------------------------------------------------

    def meter(
        self,
        agreement_id: str,
        *,
        consumer: str,
        product: str,
        max_transfers: int,
        limits: StreamLimits,
        size: int,
        now_ms: int,
        messages: int = 1,
    ) -> bool:
        """Count ``messages`` messages of ``size`` bytes in all; ``False`` (nothing
        counted) when that would pass one of ``limits``."""
        c = MeteringRow.__table__.c  # type: ignore[attr-defined]
        statement = update(MeteringRow.__table__).where(  # type: ignore[attr-defined]
            c.agreement_id == agreement_id
        )
        values: dict[str, Any] = {
            "messages": c.messages + messages,
            "bytes": c.bytes + size,
            "updated_ms": now_ms,
        }
        if limits.max_bytes:
            statement = statement.where(c.bytes + size <= limits.max_bytes)
        if limits.max_messages:
            statement = statement.where(c.messages + messages <= limits.max_messages)
            values["max_messages"] = limits.max_messages
        if limits.period_seconds:
            # A row whose period is this one or later (a replica whose clock is ahead began
            # it) counts on; an earlier period's counts start again from zero.
            period = limits.period_start_ms(now_ms)
            current = c.period_start_ms >= period
            in_period = case((current, c.period_messages), else_=0)
            bytes_in_period = case((current, c.period_bytes), else_=0)
            if limits.period_max_messages:
                statement = statement.where(in_period + messages <= limits.period_max_messages)
            if limits.period_max_bytes:
                statement = statement.where(bytes_in_period + size <= limits.period_max_bytes)
            values["period_start_ms"] = case((current, c.period_start_ms), else_=period)
            values["period_messages"] = in_period + messages
            values["period_bytes"] = bytes_in_period + size
        statement = statement.values(**values)
        for _ in range(2):
            with self._db.session() as s:
                result: CursorResult[Any] = s.execute(statement)  # type: ignore[assignment]
                if result.rowcount == 1:
                    return True
                if s.get(MeteringRow, agreement_id) is not None:
                    return False
            try:  # the agreement's first message: its row, then count again
                with self._db.session() as s:
                    s.add(
                        MeteringRow(
                            agreement_id=agreement_id,
                            consumer=consumer,
                            product=product,
                            max_transfers=max_transfers,
                            max_bytes=limits.max_bytes,
                            max_messages=limits.max_messages,
                            updated_ms=now_ms,
                        )
                    )
            except IntegrityError:
                pass  # a concurrent subscription or transfer created it
        return False

    def refund(
        self, agreement_id: str, messages: int, size: int, now_ms: int, period_start_ms: int = 0
    ) -> None:
        """Give back what was counted ahead and not sent (see ``meter``'s callers); from
        the period's counts too while the period it was counted in (``period_start_ms``,
        0 for none) is still the row's."""
        if not messages and not size:
            return
        c = MeteringRow.__table__.c  # type: ignore[attr-defined]
        values: dict[str, Any] = {
            "messages": c.messages - messages,
            "bytes": c.bytes - size,
            "updated_ms": now_ms,
        }
        if period_start_ms:
            same = c.period_start_ms == period_start_ms
            values["period_messages"] = case(
                (same, c.period_messages - messages), else_=c.period_messages
            )
            values["period_bytes"] = case((same, c.period_bytes - size), else_=c.period_bytes)
        with self._db.session() as s:
            s.execute(
                update(MeteringRow.__table__)  # type: ignore[attr-defined]
                .where(c.agreement_id == agreement_id)
                .values(**values)
            )

    def usage(self, agreement_id: str) -> tuple[int, int]:
        """(messages, bytes) metered under an agreement (bytes include copies')."""
        with self._db.session() as s:
            row = s.get(MeteringRow, agreement_id)
            return (row.messages, row.bytes) if row else (0, 0)

    def stream_usage(self, agreement_id: str, limits: StreamLimits, now_ms: int) -> StreamUsage:
        """What is metered under an agreement, in all and in the period of ``now_ms``."""
        with self._db.session() as s:
            row = s.get(MeteringRow, agreement_id)
            if row is None:
                return StreamUsage()
            current = bool(limits.period_seconds) and row.period_start_ms >= (
                limits.period_start_ms(now_ms)
            )
            return StreamUsage(
                row.messages,
                row.bytes,
                row.period_messages if current else 0,
                row.period_bytes if current else 0,
            )
