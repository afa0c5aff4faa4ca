"""Computations and the ε they spend, on SQLite or PostgreSQL.

ε is metered in the agreement's metering row (the one that counts its transfers), in
integer millionths so the budget's condition is exact in SQL. A reservation is one
conditional ``UPDATE`` of that row in the same transaction that records the computation:
concurrent questions — also from replicas sharing a PostgreSQL database, whose row lock
re-evaluates the condition — can never spend more than the budget. A computation that
fails (the source is down, the engine refuses) gives its reservation back.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import CursorResult, update
from sqlmodel import select

from connector.errors import NotFound, PermissionDenied, PreconditionFailed
from connector.store.database import Database
from connector.store.models import ComputationRow, MeteringRow
from connector.transfer.store import ensure_metering

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


def _row(c: Computation) -> ComputationRow:
    return ComputationRow(
        id=c.id,
        role=c.role,
        agreement_id=c.agreement_id,
        product=c.product,
        counterparty=c.counterparty,
        state=c.state,
        query_sha256=c.query_sha256,
        answer_sha256=c.answer_sha256,
        epsilon_micro=c.epsilon_micro,
        receipt=c.receipt,
        reason=c.reason[:512],
        started_ms=c.started_ms,
        ended_ms=c.ended_ms,
    )


class ComputationStore:
    """Computations of both roles and the provider's ε metering."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def usage(self, agreement_id: str) -> EpsilonUse:
        """Computations and ε used so far under an agreement."""
        with self._db.session() as s:
            row = s.get(MeteringRow, agreement_id)
            if row is None:
                return EpsilonUse(0, 0, 0)
            return EpsilonUse(row.computations, row.epsilon_spent_micro, row.epsilon_budget_micro)

    def reserve(self, c: Computation, *, budget_micro: int, now_ms: int) -> EpsilonUse:
        """Spend ``c.epsilon_micro`` and record ``c``, or refuse with
        ``privacy_budget_exhausted`` (ε spent and left in the message); what is used after."""
        ensure_metering(
            self._db,
            MeteringRow(
                agreement_id=c.agreement_id,
                consumer=c.counterparty,
                product=c.product,
                epsilon_budget_micro=budget_micro,
                updated_ms=now_ms,
            ),
        )
        m = MeteringRow.__table__.c  # type: ignore[attr-defined]
        spend = (
            update(MeteringRow.__table__)  # type: ignore[attr-defined]
            .where(m.agreement_id == c.agreement_id)
            # The budget signed in the agreement (a transfer that created the row first
            # wrote 0 there: it knows no budget).
            .values(
                epsilon_budget_micro=budget_micro,
                computations=m.computations + 1,
                epsilon_spent_micro=m.epsilon_spent_micro + c.epsilon_micro,
                updated_ms=now_ms,
            )
        )
        if budget_micro:
            spend = spend.where(m.epsilon_spent_micro + c.epsilon_micro <= budget_micro)
        with self._db.session() as s:
            result: CursorResult[object] = s.execute(spend)  # type: ignore[assignment]
            if result.rowcount != 1:
                s.rollback()
                used = self.usage(c.agreement_id)
                raise PermissionDenied(
                    f"privacy_budget_exhausted: this question needs ε {c.epsilon_micro / 1e6:g}; "
                    f"the agreement's budget is {budget_micro / 1e6:g}, {used.spent:g} spent, "
                    f"{max(0, budget_micro - used.spent_micro) / 1e6:g} left"
                )
            s.add(_row(c))
            s.flush()
            row = s.get(MeteringRow, c.agreement_id)
            assert row is not None
            return EpsilonUse(row.computations, row.epsilon_spent_micro, budget_micro)

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

    def create(self, c: Computation) -> Computation:
        """Record a computation (the consumer's side)."""
        with self._db.session() as s:
            s.add(_row(c))
        return c

    def get(self, computation_id: str) -> Computation:
        """One computation, or ``NotFound``."""
        with self._db.session() as s:
            row = s.get(ComputationRow, computation_id)
            if row is None:
                raise NotFound(f"computation {computation_id!r} not found")
            return _computation(row)

    def update(self, computation_id: str, *, expect: str, **values: object) -> Computation:
        """Change a computation in state ``expect`` (a compare-and-set on the state)."""
        with self._db.session() as s:
            result: CursorResult[object] = s.execute(  # type: ignore[assignment]
                update(ComputationRow)
                .where(ComputationRow.id == computation_id)  # type: ignore[arg-type]
                .where(ComputationRow.state == expect)  # type: ignore[arg-type]
                .values(**values)
            )
            if result.rowcount != 1:
                s.rollback()
                current = self.get(computation_id)
                raise PreconditionFailed(f"computation {computation_id} is {current.state}")
        return self.get(computation_id)

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
