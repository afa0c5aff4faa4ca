"""Transfer records and the provider's metering, on SQLite or PostgreSQL.

Limits are enforced by one conditional ``UPDATE`` of the agreement's metering row in the
same transaction that records the transfer: concurrent starts (also from replicas sharing a
PostgreSQL database, whose row lock re-evaluates the condition) can never exceed a limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import CursorResult, and_, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from connector.errors import Aborted, ConflictError, NotFound, PermissionDenied, PreconditionFailed
from connector.store.database import Database, RawTransaction
from connector.store.models import MeteringRow, TransferRow

__all__ = [
    "ACTIVE",
    "CONSUMER",
    "PROVIDER",
    "Metering",
    "Transfer",
    "TransferStore",
    "ensure_metering",
    "ensure_metering_in",
]

PROVIDER, CONSUMER = "provider", "consumer"
STARTING, STARTED, COMPLETED, FAILED, TERMINATED = (
    "starting",
    "started",
    "completed",
    "failed",
    "terminated",
)
ACTIVE = frozenset({STARTING, STARTED})

LogWrite = Callable[[RawTransaction], list[int]]
"""Audit entries to append within a store transaction (``AuditLog.prepare``)."""

_NAMES = tuple(c.name for c in TransferRow.__table__.columns)  # type: ignore[attr-defined]
_SCALARS = frozenset(_NAMES) - {"id", "fields", "obligations", "masks"}  # what update() may set
_SELECT = f"SELECT {', '.join(_NAMES)} FROM transfer WHERE id = ?"  # noqa: S608


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
    masks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Provider, record sources: the masks the delivered form was made with."""
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
    """Transfers and bytes, computations and ε counted under one agreement."""

    agreement_id: str
    consumer: str
    product: str
    transfers: int
    bytes: int
    completed: int
    completed_bytes: int
    max_transfers: int
    max_bytes: int
    computations: int = 0
    """Answers given under the agreement (compute-to-data)."""
    epsilon_spent_micro: int = 0
    epsilon_budget_micro: int = 0
    messages: int = 0
    """Stream messages delivered (their bytes are in ``bytes``)."""
    max_messages: int = 0
    """The agreement's stream message limit (0: none)."""


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
        masks=json.loads(row.masks),
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


def _from_values(values: Mapping[str, Any]) -> Transfer:
    """A transfer from a raw row's columns (SQLite returns booleans as integers)."""
    return _transfer(TransferRow(**{**values, "push": bool(values["push"])}))


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
        masks=json.dumps({k: dict(v) for k, v in t.masks.items()}, sort_keys=True),
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


_METERING_COLUMNS = tuple(c.name for c in MeteringRow.__table__.columns)  # type: ignore[attr-defined]
_CREATE_METERING = (
    f"INSERT INTO metering ({', '.join(_METERING_COLUMNS)})"  # noqa: S608
    f" VALUES ({', '.join('?' * len(_METERING_COLUMNS))})"
    " ON CONFLICT (agreement_id) DO NOTHING"
)


def ensure_metering_in(tx: RawTransaction, row: MeteringRow) -> None:
    """Create an agreement's metering row as ``row`` unless it exists, within ``tx``: the
    row every conditional reservation (transfers, bytes, ε) updates. One statement, which
    a concurrent creator (another thread, or a replica on PostgreSQL, where the insert
    waits for the other's to commit) turns into nothing rather than an error."""
    tx.execute(_CREATE_METERING, tuple(getattr(row, name) for name in _METERING_COLUMNS)).close()


def ensure_metering(db: Database, row: MeteringRow) -> None:
    """``ensure_metering_in`` in a transaction of its own."""
    with db.transaction() as tx:
        ensure_metering_in(tx, row)


class TransferStore:
    """Transfers of both roles and the provider's metering."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def database(self) -> Database:
        """Where the transfers are kept (the console's aggregates read it)."""
        return self._db

    # -- provider: counting ---------------------------------------------------------

    def usage(self, agreement_id: str) -> tuple[int, int]:
        """(transfers, bytes) counted so far under an agreement."""
        with self._db.session() as s:
            row = s.get(MeteringRow, agreement_id)
            return (row.transfers, row.bytes) if row else (0, 0)

    def reserve(self, t: Transfer, *, max_transfers: int, max_bytes: int, now_ms: int) -> None:
        """Count one transfer of ``t.size`` bytes and record it, or refuse at a limit."""
        ensure_metering(
            self._db,
            MeteringRow(
                agreement_id=t.agreement_id,
                consumer=t.counterparty,
                product=t.product,
                max_transfers=max_transfers,
                max_bytes=max_bytes,
                updated_ms=now_ms,
            ),
        )
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

    def metering(self, *, after: Sequence[str] = (), limit: int | None = None) -> list[Metering]:
        """Every agreement's counts, by consumer then agreement; with ``limit``, a page of
        them: the next ``limit`` after position ``after`` (consumer and agreement id)."""
        with self._db.session() as s:
            query = select(MeteringRow)
            if after:
                consumer, agreement = after
                query = query.where(
                    or_(
                        col(MeteringRow.consumer) > consumer,
                        and_(
                            col(MeteringRow.consumer) == consumer,
                            col(MeteringRow.agreement_id) > agreement,
                        ),
                    )
                )
            # One order, paged or not: a page continues from where the last one ended.
            query = query.order_by(col(MeteringRow.consumer), col(MeteringRow.agreement_id))
            if limit is not None:
                query = query.limit(limit)
            rows = s.exec(query).all()
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
                    computations=r.computations,
                    epsilon_spent_micro=r.epsilon_spent_micro,
                    epsilon_budget_micro=r.epsilon_budget_micro,
                    messages=r.messages,
                    max_messages=r.max_messages,
                )
                for r in rows
            ]

    # -- both roles -----------------------------------------------------------------

    def create(self, t: Transfer, *, log: LogWrite | None = None) -> Transfer:
        """Record a transfer (the consumer's side); ``ConflictError`` if its id is taken.

        ``log`` appends the audit entries saying so in the same transaction, after the
        insert: the record and its entries commit together or not at all.
        """
        row = _row(t)
        try:
            with self._db.transaction() as tx:
                tx.execute(
                    f"INSERT INTO transfer ({', '.join(_NAMES)})"  # noqa: S608
                    f" VALUES ({', '.join('?' * len(_NAMES))})",
                    [getattr(row, name) for name in _NAMES],
                ).close()
                if log is not None:
                    log(tx)
        except IntegrityError:
            raise ConflictError(f"transfer {t.id} is already recorded") from None
        return t

    def get(self, transfer_id: str) -> Transfer:
        """One transfer, or ``NotFound``."""
        with self._db.session() as s:
            row = s.get(TransferRow, transfer_id)
            if row is None:
                raise NotFound(f"transfer {transfer_id!r} not found")
            return _transfer(row)

    def active_with(self, role: str, counterparties: Iterable[str]) -> list[Transfer]:
        """The transfers of ``role`` not yet ended whose counterparty is one of
        ``counterparties``."""
        names = sorted(set(counterparties))
        if not names:
            return []
        with self._db.session() as s:
            rows = s.exec(
                select(TransferRow).where(
                    TransferRow.role == role,
                    col(TransferRow.state).in_(sorted(ACTIVE)),
                    col(TransferRow.counterparty).in_(names),
                )
            ).all()
            return [_transfer(r) for r in rows]

    def update(
        self,
        transfer_id: str,
        *,
        expect: frozenset[str] | None = None,
        log: LogWrite | None = None,
        log_index: str = "",
        **values: Any,
    ) -> Transfer:
        """Change a transfer, only if it is in one of the ``expect`` states.

        ``log`` appends the audit entries describing the change in the same transaction,
        once the change has won (a compare-and-set on the state read, the row also locked
        on PostgreSQL); ``log_index`` names the column that keeps the first entry's index.
        Completing a provider's transfer also counts it as completed in the metering.
        """
        unknown = set(values) - _SCALARS or ({log_index} - _SCALARS if log_index else set())
        if unknown:
            raise TypeError(f"not a column update() sets: {sorted(unknown)}")
        if "reason" in values:
            values["reason"] = str(values["reason"])[:512]
        lock = " FOR UPDATE" if self._db.postgres else ""
        with self._db.transaction() as tx:
            found = tx.one(f"{_SELECT}{lock}", (transfer_id,))
            if found is None:
                raise NotFound(f"transfer {transfer_id!r} not found")
            row = dict(zip(_NAMES, found, strict=True))
            if expect is not None and row["state"] not in expect:
                raise PreconditionFailed(
                    f"transfer {transfer_id} is {row['state']}"
                    + (f" ({row['reason']})" if row["reason"] else "")
                )
            if (
                values.get("state") == COMPLETED
                and row["role"] == PROVIDER
                and row["state"] != COMPLETED
            ):
                tx.execute(
                    "UPDATE metering SET completed = completed + 1,"
                    " completed_bytes = completed_bytes + ? WHERE agreement_id = ?",
                    (row["size"], row["agreement_id"]),
                ).close()
            if values:
                cur = tx.execute(
                    f"UPDATE transfer SET {', '.join(f'{k} = ?' for k in values)}"  # noqa: S608
                    " WHERE id = ? AND state = ?",
                    (*values.values(), transfer_id, row["state"]),
                )
                changed = cur.rowcount
                cur.close()
                if changed != 1:
                    raise Aborted(f"transfer {transfer_id} changed while this was handled; retry")
            row.update(values)
            if log is not None:
                indices = log(tx)
                if log_index and indices:
                    tx.execute(
                        f"UPDATE transfer SET {log_index} = ? WHERE id = ?",  # noqa: S608
                        (indices[0], transfer_id),
                    ).close()
                    row[log_index] = indices[0]
        return _from_values(row)

    def kept_holdings(
        self, agreement_id: str | None = None
    ) -> list[tuple[str, str, str, bool, str | None]]:
        """The consumer's kept holdings (of ``agreement_id``, if given), newest first, as
        the holdings sweep decides on them, in one read: (transfer, agreement, obligations
        JSON, whether the agreement is known here, its revocation or None).

        Not whole transfers, and not one look-up of the agreement per holding: the sweep
        reads every holding every few seconds, and reading 20,000 through the ORM with a
        query each for their agreements took seconds of the connector's CPU each time, so
        its pages stalled while it ran (``bench/console.py``)."""
        sql = (
            "SELECT t.id, t.agreement_id, t.obligations, n.pid, n.revocation FROM transfer t"
            " LEFT JOIN negotiation n ON n.agreement_id = t.agreement_id"
            " WHERE t.role = ? AND t.state = ? AND t.deleted_ms = 0"
        )
        params: list[Any] = [CONSUMER, COMPLETED]
        if agreement_id is not None:
            sql += " AND t.agreement_id = ?"
            params.append(agreement_id)
        with self._db.transaction() as tx:
            rows = tx.all(sql + " ORDER BY t.started_ms DESC, t.id DESC", params)
        held: dict[str, tuple[str, str, str, bool, str | None]] = {}
        for tid, agreement, obligations, pid, revocation in rows:
            seen = held.get(tid)
            # An agreement both sides of which are recorded here (a connector that
            # consumes its own product) has two negotiations: a revocation in either counts.
            if seen is None or (revocation and not seen[4]):
                held[tid] = (tid, agreement, obligations, pid is not None, revocation)
        return list(held.values())

    def list(
        self,
        role: str = "",
        holdings: bool = False,
        *,
        before: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[Transfer]:
        """Transfers, newest first; ``holdings``: the consumer's kept, completed ones.

        A page of them with ``limit``: the next ``limit`` after position ``before`` (the
        ``started_ms`` and id of the last one shown, as ``page_position`` gives).
        """
        with self._db.session() as s:
            query = select(TransferRow)
            if before:
                started, last = int(before[0]), before[1]
                query = query.where(
                    or_(
                        col(TransferRow.started_ms) < started,
                        and_(col(TransferRow.started_ms) == started, col(TransferRow.id) < last),
                    )
                )
            # Newest first, paged or not: a page continues from where the last one ended.
            query = query.order_by(col(TransferRow.started_ms).desc(), col(TransferRow.id).desc())
            if limit is not None:
                query = query.limit(limit)
            if role:
                query = query.where(TransferRow.role == role)
            if holdings:
                query = query.where(
                    TransferRow.role == CONSUMER,
                    TransferRow.state == COMPLETED,
                    TransferRow.deleted_ms == 0,
                )
            rows = s.exec(query).all()
            return [_transfer(r) for r in rows]
