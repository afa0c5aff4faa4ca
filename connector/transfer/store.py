"""Transfer records and the provider's metering, on SQLite or PostgreSQL.

Limits are enforced by one conditional ``UPDATE`` of the agreement's metering row in the
same transaction that records the transfer: concurrent starts (also from replicas sharing a
PostgreSQL database, whose row lock re-evaluates the condition) can never exceed a limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import CursorResult, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from connector.errors import NotFound, PermissionDenied, PreconditionFailed
from connector.store.database import Database
from connector.store.models import MeteringRow, TransferRow

__all__ = ["ACTIVE", "CONSUMER", "PROVIDER", "Metering", "Transfer", "TransferStore"]

PROVIDER, CONSUMER = "provider", "consumer"
STARTING, STARTED, COMPLETED, FAILED, TERMINATED = (
    "starting",
    "started",
    "completed",
    "failed",
    "terminated",
)
ACTIVE = frozenset({STARTING, STARTED})


@dataclass(frozen=True)
class Transfer:
    """One side's record of a transfer."""

    id: str
    role: str
    agreement_id: str
    product: str
    counterparty: str
    state: str
    size: int
    sha256: str
    chunk_size: int
    push: bool = False
    format: str = ""
    fields: tuple[str, ...] | None = None
    obligations: Mapping[str, Any] = field(default_factory=dict)
    decision_id: str = ""
    path: str = ""
    source_mtime_ns: int = 0
    received: int = 0
    provider_log_index: int = -1
    consumer_log_index: int = -1
    receipt: str | None = None
    reason: str = ""
    started_ms: int = 0
    ended_ms: int = 0
    deleted_ms: int = 0


@dataclass(frozen=True)
class Metering:
    """Transfers and bytes counted under one agreement."""

    agreement_id: str
    consumer: str
    product: str
    transfers: int
    bytes: int
    completed: int
    completed_bytes: int
    max_transfers: int
    max_bytes: int


def _transfer(row: TransferRow) -> Transfer:
    fields = json.loads(row.fields)
    return Transfer(
        id=row.id,
        role=row.role,
        agreement_id=row.agreement_id,
        product=row.product,
        counterparty=row.counterparty,
        state=row.state,
        size=row.size,
        sha256=row.sha256,
        chunk_size=row.chunk_size,
        push=row.push,
        format=row.format,
        fields=tuple(fields) if fields is not None else None,
        obligations=json.loads(row.obligations),
        decision_id=row.decision_id,
        path=row.path,
        source_mtime_ns=row.source_mtime_ns,
        received=row.received,
        provider_log_index=row.provider_log_index,
        consumer_log_index=row.consumer_log_index,
        receipt=row.receipt,
        reason=row.reason,
        started_ms=row.started_ms,
        ended_ms=row.ended_ms,
        deleted_ms=row.deleted_ms,
    )


def _row(t: Transfer) -> TransferRow:
    return TransferRow(
        id=t.id,
        role=t.role,
        agreement_id=t.agreement_id,
        product=t.product,
        counterparty=t.counterparty,
        state=t.state,
        size=t.size,
        sha256=t.sha256,
        chunk_size=t.chunk_size,
        push=t.push,
        format=t.format,
        fields=json.dumps(list(t.fields) if t.fields is not None else None),
        obligations=json.dumps(dict(t.obligations), sort_keys=True),
        decision_id=t.decision_id,
        path=t.path,
        source_mtime_ns=t.source_mtime_ns,
        received=t.received,
        provider_log_index=t.provider_log_index,
        consumer_log_index=t.consumer_log_index,
        receipt=t.receipt,
        reason=t.reason[:512],
        started_ms=t.started_ms,
        ended_ms=t.ended_ms,
        deleted_ms=t.deleted_ms,
    )


class TransferStore:
    """Transfers of both roles and the provider's metering."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- provider: counting ---------------------------------------------------------

    def usage(self, agreement_id: str) -> tuple[int, int]:
        """(transfers, bytes) counted so far under an agreement."""
        with self._db.session() as s:
            row = s.get(MeteringRow, agreement_id)
            return (row.transfers, row.bytes) if row else (0, 0)

    def _ensure_metering(
        self, t: Transfer, max_transfers: int, max_bytes: int, now_ms: int
    ) -> None:
        try:
            with self._db.session() as s:
                if s.get(MeteringRow, t.agreement_id) is None:
                    s.add(
                        MeteringRow(
                            agreement_id=t.agreement_id,
                            consumer=t.counterparty,
                            product=t.product,
                            max_transfers=max_transfers,
                            max_bytes=max_bytes,
                            updated_ms=now_ms,
                        )
                    )
        except IntegrityError:
            pass  # a concurrent start created it

    def reserve(self, t: Transfer, *, max_transfers: int, max_bytes: int, now_ms: int) -> None:
        """Count one transfer of ``t.size`` bytes and record it, or refuse at a limit."""
        self._ensure_metering(t, max_transfers, max_bytes, now_ms)
        c = MeteringRow.__table__.c  # type: ignore[attr-defined]
        with self._db.session() as s:
            result: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                update(MeteringRow.__table__)  # type: ignore[attr-defined]
                .where(c.agreement_id == t.agreement_id)
                .where((c.max_transfers == 0) | (c.transfers < c.max_transfers))
                .where((c.max_bytes == 0) | (c.bytes + t.size <= c.max_bytes))
                .values(transfers=c.transfers + 1, bytes=c.bytes + t.size, updated_ms=now_ms)
            )
            if result.rowcount != 1:
                s.rollback()
                used = s.get(MeteringRow, t.agreement_id)
                assert used is not None
                if used.max_transfers and used.transfers >= used.max_transfers:
                    raise PermissionDenied(
                        f"transfer_limit_reached: the agreement allows {used.max_transfers} "
                        f"transfers and {used.transfers} have been made"
                    )
                raise PermissionDenied(
                    f"byte_limit_reached: {t.size} more bytes would exceed the agreement's "
                    f"{used.max_bytes} ({used.bytes} used)"
                )
            s.add(_row(t))

    def release(self, transfer_id: str, reason: str, now_ms: int) -> None:
        """Undo a reservation whose transfer never started (its log entry failed)."""
        with self._db.session() as s:
            row = s.get(TransferRow, transfer_id)
            if row is None or row.state != STARTING:
                return
            s.execute(
                update(MeteringRow)
                .where(MeteringRow.agreement_id == row.agreement_id)  # type: ignore[arg-type]
                .values(
                    transfers=MeteringRow.transfers - 1,
                    bytes=MeteringRow.bytes - row.size,
                    updated_ms=now_ms,
                )
            )
            row.state, row.reason, row.ended_ms = FAILED, reason[:512], now_ms

    def metering(self) -> list[Metering]:
        """Every agreement's counts."""
        with self._db.session() as s:
            rows = s.exec(select(MeteringRow)).all()
            return [
                Metering(
                    agreement_id=r.agreement_id,
                    consumer=r.consumer,
                    product=r.product,
                    transfers=r.transfers,
                    bytes=r.bytes,
                    completed=r.completed,
                    completed_bytes=r.completed_bytes,
                    max_transfers=r.max_transfers,
                    max_bytes=r.max_bytes,
                )
                for r in sorted(rows, key=lambda r: (r.consumer, r.agreement_id))
            ]

    # -- both roles -----------------------------------------------------------------

    def create(self, t: Transfer) -> Transfer:
        """Record a transfer (the consumer's side)."""
        with self._db.session() as s:
            s.add(_row(t))
        return t

    def get(self, transfer_id: str) -> Transfer:
        """One transfer, or ``NotFound``."""
        with self._db.session() as s:
            row = s.get(TransferRow, transfer_id)
            if row is None:
                raise NotFound(f"transfer {transfer_id!r} not found")
            return _transfer(row)

    def update(
        self, transfer_id: str, *, expect: frozenset[str] | None = None, **values: Any
    ) -> Transfer:
        """Change a transfer, only if it is in one of the ``expect`` states.

        Completing a provider's transfer also counts it as completed in the metering.
        """
        with self._db.session() as s:
            query = select(TransferRow).where(TransferRow.id == transfer_id)
            if self._db.dialect == "postgresql":
                query = query.with_for_update()
            row = s.exec(query).first()
            if row is None:
                raise NotFound(f"transfer {transfer_id!r} not found")
            if expect is not None and row.state not in expect:
                raise PreconditionFailed(
                    f"transfer {transfer_id} is {row.state}"
                    + (f" ({row.reason})" if row.reason else "")
                )
            if values.get("state") == COMPLETED and row.role == PROVIDER and row.state != COMPLETED:
                s.execute(
                    update(MeteringRow)
                    .where(MeteringRow.agreement_id == row.agreement_id)  # type: ignore[arg-type]
                    .values(
                        completed=MeteringRow.completed + 1,
                        completed_bytes=MeteringRow.completed_bytes + row.size,
                    )
                )
            for key, value in values.items():
                if key == "reason":
                    value = str(value)[:512]
                setattr(row, key, value)
            s.add(row)
            s.flush()
            return _transfer(row)

    def list(self, role: str = "", holdings: bool = False) -> list[Transfer]:
        """Transfers, newest first; ``holdings``: the consumer's kept, completed ones."""
        with self._db.session() as s:
            query = select(TransferRow)
            if role:
                query = query.where(TransferRow.role == role)
            if holdings:
                query = query.where(
                    TransferRow.role == CONSUMER,
                    TransferRow.state == COMPLETED,
                    TransferRow.deleted_ms == 0,
                )
            rows = s.exec(query).all()
            return sorted((_transfer(r) for r in rows), key=lambda t: -t.started_ms)
