"""Computations and the ε they spend, on SQLite or PostgreSQL.

ε is metered in the agreement's metering row (the one that counts its transfers), in
integer millionths so the budget's condition is exact in SQL. A reservation is one
conditional ``UPDATE`` of that row in the same transaction that records the computation:
concurrent questions — also from replicas sharing a PostgreSQL database, whose row lock
re-evaluates the condition — can never spend more than the budget. A computation that
fails (the source is down, the engine refuses) gives its reservation back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import update
from sqlmodel import select

from connector.errors import NotFound, PermissionDenied, PreconditionFailed
from connector.negotiation.outbox import requeue
from connector.store.database import Database, RawTransaction
from connector.store.models import ComputationRow, MeteringRow
from connector.transfer.store import ensure_metering_in

__all__ = [
    "ANSWERED",
    "CONFIRMED",
    "FAILED",
    "RESERVED",
    "Computation",
    "ComputationStore",
    "EpsilonUse",
    "micro",
]

InTransaction = Callable[[RawTransaction], object]
"""Writes more in a store method's transaction (audit entries, an outbox row)."""

RESERVED, ANSWERED, CONFIRMED, FAILED = "reserved", "answered", "confirmed", "failed"
PROVIDER, CONSUMER = "provider", "consumer"


def micro(epsilon: float) -> int:
    """ε in integer millionths (the unit the metering row counts in)."""
    return round(epsilon * 1_000_000)


@dataclass(frozen=True)
class Computation:
    """One side's record of a computation."""

    id: str
    role: str
    agreement_id: str
    product: str
    counterparty: str
    state: str
    started_ms: int
    query_sha256: str = ""
    answer_sha256: str = ""
    epsilon_micro: int = 0
    receipt: str | None = None
    reason: str = ""
    ended_ms: int = 0


@dataclass(frozen=True)
class EpsilonUse:
    """What an agreement has used of its computations and its ε budget."""

    computations: int
    spent_micro: int
    budget_micro: int

    @property
    def spent(self) -> float:
        """ε spent."""
        return self.spent_micro / 1_000_000

    @property
    def left(self) -> float:
        """ε left (0 without a budget)."""
        return max(0, self.budget_micro - self.spent_micro) / 1_000_000


def _computation(row: ComputationRow) -> Computation:
    return Computation(
        id=row.id,
        role=row.role,
        agreement_id=row.agreement_id,
        product=row.product,
        counterparty=row.counterparty,
        state=row.state,
        started_ms=row.started_ms,
        query_sha256=row.query_sha256,
        answer_sha256=row.answer_sha256,
        epsilon_micro=row.epsilon_micro,
        receipt=row.receipt,
        reason=row.reason,
        ended_ms=row.ended_ms,
    )


_COLUMNS = (
    "id",
    "role",
    "agreement_id",
    "product",
    "counterparty",
    "state",
    "query_sha256",
    "answer_sha256",
    "epsilon_micro",
    "receipt",
    "reason",
    "started_ms",
    "ended_ms",
)
_INSERT = (
    f"INSERT INTO computation ({', '.join(_COLUMNS)})"  # noqa: S608
    f" VALUES ({', '.join('?' * len(_COLUMNS))})"
)
_SELECT_ONE = f"SELECT {', '.join(_COLUMNS)} FROM computation WHERE id = ?"  # noqa: S608
_UPDATABLE = frozenset({"state", "answer_sha256", "receipt", "reason", "ended_ms"})


def _values(c: Computation) -> tuple[object, ...]:
    """``c`` as the values of ``_INSERT``."""
    return tuple(getattr(c, name) if name != "reason" else c.reason[:512] for name in _COLUMNS)


def _spent(tx: RawTransaction, spend: str, params: tuple[object, ...]) -> int:
    """Rows the conditional spend updated (1: spent; 0: no row, or not within budget)."""
    cur = tx.execute(spend, params)
    try:
        return int(cur.rowcount)
    finally:
        cur.close()


class _Exhausted(Exception):
    """The conditional spend matched no row: the budget would be exceeded."""


class ComputationStore:
    """Computations of both roles and the provider's ε metering."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def usage(self, agreement_id: str) -> EpsilonUse:
        """Computations and ε used so far under an agreement."""
        # Straight to the driver: asked before every question, and the ORM's session
        # cost ten times the statement.
        with self._db.transaction() as tx:
            row = tx.one(
                "SELECT computations, epsilon_spent_micro, epsilon_budget_micro"
                " FROM metering WHERE agreement_id = ?",
                (agreement_id,),
            )
        return EpsilonUse(*(int(v) for v in row)) if row is not None else EpsilonUse(0, 0, 0)

    def reserve(
        self,
        c: Computation,
        *,
        budget_micro: int,
        now_ms: int,
        log: InTransaction | None = None,
        durable: bool = True,
    ) -> EpsilonUse:
        """Spend ``c.epsilon_micro`` and record ``c``, or refuse with
        ``privacy_budget_exhausted`` (ε spent and left in the message); what is used after.

        ``log``: audit entries appended in the same transaction. ``durable=False``: the
        reservation is not waited for on the disk (``Database.transaction``); the caller's
        next synced commit (the receipt's, before the answer leaves) makes it durable.
        """
        # The budget signed in the agreement (a transfer that created the row first wrote
        # 0 there: it knows no budget).
        spend = (
            "UPDATE metering SET epsilon_budget_micro = ?, computations = computations + 1,"
            " epsilon_spent_micro = epsilon_spent_micro + ?, updated_ms = ?"
            " WHERE agreement_id = ?"
        )
        params: tuple[object, ...] = (budget_micro, c.epsilon_micro, now_ms, c.agreement_id)
        if budget_micro:
            spend += " AND epsilon_spent_micro + ? <= ?"
            params += (c.epsilon_micro, budget_micro)
        try:
            with self._db.transaction(durable=durable) as tx:
                if _spent(tx, spend, params) != 1:
                    # No row yet (the agreement's first question or transfer: made here,
                    # then spent from), or a budget the question would exceed.
                    metering = MeteringRow(
                        agreement_id=c.agreement_id,
                        consumer=c.counterparty,
                        product=c.product,
                        epsilon_budget_micro=budget_micro,
                        updated_ms=now_ms,
                    )
                    ensure_metering_in(tx, metering)
                    if _spent(tx, spend, params) != 1:
                        raise _Exhausted
                tx.execute(_INSERT, _values(c)).close()
                row = tx.one(
                    "SELECT computations, epsilon_spent_micro FROM metering WHERE agreement_id = ?",
                    (c.agreement_id,),
                )
                assert row is not None
                if log is not None:
                    log(tx)
        except _Exhausted:
            used = self.usage(c.agreement_id)
            raise PermissionDenied(
                f"privacy_budget_exhausted: this question needs ε {c.epsilon_micro / 1e6:g}; "
                f"the agreement's budget is {budget_micro / 1e6:g}, {used.spent:g} spent, "
                f"{max(0, budget_micro - used.spent_micro) / 1e6:g} left"
            ) from None
        return EpsilonUse(int(row[0]), int(row[1]), budget_micro)

    def release(self, computation_id: str, reason: str, now_ms: int) -> None:
        """Give back the ε of a computation that gave no answer."""
        with self._db.session() as s:
            row = s.get(ComputationRow, computation_id)
            if row is None or row.state != RESERVED:
                return
            s.execute(
                update(MeteringRow)
                .where(MeteringRow.agreement_id == row.agreement_id)  # type: ignore[arg-type]
                .values(
                    computations=MeteringRow.computations - 1,
                    epsilon_spent_micro=MeteringRow.epsilon_spent_micro - row.epsilon_micro,
                    updated_ms=now_ms,
                )
            )
            row.state, row.reason, row.ended_ms = FAILED, reason[:512], now_ms

    def create(self, c: Computation, *, log: InTransaction | None = None) -> Computation:
        """Record a computation (the consumer's side), with ``log``'s entries in the same
        transaction, durable before it returns."""
        with self._db.transaction() as tx:
            tx.execute(_INSERT, _values(c)).close()
            if log is not None:
                log(tx)
        return c

    def get(self, computation_id: str) -> Computation:
        """One computation, or ``NotFound``.

        Straight to the driver: read for every confirmation on both sides, where the
        ORM's session cost several times the statement.
        """
        with self._db.transaction() as tx:
            row = tx.one(_SELECT_ONE, (computation_id,))
        if row is None:
            raise NotFound(f"computation {computation_id!r} not found")
        return Computation(**dict(zip(_COLUMNS, row, strict=True)))

    def update(
        self,
        computation_id: str,
        *,
        expect: str,
        log: InTransaction | None = None,
        durable: bool = True,
        **values: object,
    ) -> None:
        """Change a computation in state ``expect`` (a compare-and-set on the state), with
        ``log``'s entries in the same transaction; ``durable`` as for ``reserve``."""
        unknown = set(values) - _UPDATABLE
        if unknown:
            raise ValueError(f"not a computation column: {', '.join(sorted(unknown))}")
        if "reason" in values:
            values["reason"] = str(values["reason"])[:512]
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._db.transaction(durable=durable) as tx:
            cur = tx.execute(
                f"UPDATE computation SET {assignments} WHERE id = ? AND state = ?",  # noqa: S608
                (*values.values(), computation_id, expect),
            )
            changed = cur.rowcount
            cur.close()
            if changed == 1 and log is not None:
                log(tx)
        if changed != 1:
            current = self.get(computation_id)
            raise PreconditionFailed(f"computation {computation_id} is {current.state}")

    def pending_confirmations(self) -> list[Computation]:
        """The consumer's computations answered but not yet confirmed to their provider."""
        with self._db.session() as s:
            rows = s.exec(
                select(ComputationRow)
                .where(ComputationRow.role == CONSUMER)
                .where(ComputationRow.state == ANSWERED)
            ).all()
            return sorted((_computation(r) for r in rows), key=lambda c: c.started_ms)

    def requeue_confirmations(
        self, owed: Sequence[tuple[str, str, bytes]], *, method: str, now_ms: int
    ) -> None:
        """Make each confirmation ``(message id, provider, payload)`` due now in the
        outbox (``outbox.requeue``; a lease is honoured on PostgreSQL only, where it may
        be a replica's), in one transaction."""
        if not owed:
            return
        with self._db.transaction() as tx:
            for message_id, target, payload in owed:
                requeue(
                    tx,
                    message_id=message_id,
                    target=target,
                    method=method,
                    payload=payload,
                    now_ms=now_ms,
                    leased_too=not self._db.postgres,
                )

    def list(self, role: str = "", agreement_id: str = "") -> list[Computation]:
        """Computations, newest first."""
        with self._db.session() as s:
            query = select(ComputationRow)
            if role:
                query = query.where(ComputationRow.role == role)
            if agreement_id:
                query = query.where(ComputationRow.agreement_id == agreement_id)
            rows = s.exec(query).all()
            return sorted((_computation(r) for r in rows), key=lambda c: -c.started_ms)
