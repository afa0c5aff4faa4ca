"""Negotiation records, the outbox and the inbox, changed together in one transaction.

A state transition and the message it sends to the other side commit together (a
transactional outbox), so a crash can neither lose nor double a transition's message;
the inbox makes a repeated delivery of a message harmless.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import CursorResult, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, select

from connector.errors import Aborted, ConflictError, NotFound
from connector.negotiation.outbox import Pending, pending_of
from connector.negotiation.states import State, check_transition
from connector.store.database import Database
from connector.store.models import InboxRow, NegotiationRow, OutboxRow

__all__ = ["Negotiation", "NegotiationStore", "Outgoing"]


@dataclass(frozen=True)
class Negotiation:
    """One side's view of a negotiation."""

    pid: str
    role: str
    counterparty: str
    counterparty_pid: str
    product: str
    offer: str
    purpose: str
    state: State
    reasons: tuple[str, ...] = ()
    agreement_id: str | None = None
    agreement: str | None = None
    revocation: str | None = None
    terms: dict[str, Any] = field(default_factory=dict)
    """What the contract decision fixed for the agreement (operation grant, consent)."""
    created_ms: int = 0
    updated_ms: int = 0


@dataclass(frozen=True)
class Outgoing:
    """A message to queue with a transition."""

    target: str
    method: str
    payload: bytes
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def _negotiation(row: NegotiationRow) -> Negotiation:
    return Negotiation(
        pid=row.pid,
        role=row.role,
        counterparty=row.counterparty,
        counterparty_pid=row.counterparty_pid,
        product=row.product,
        offer=row.offer,
        purpose=row.purpose,
        state=State(row.state),
        reasons=tuple(json.loads(row.reasons)),
        agreement_id=row.agreement_id,
        agreement=row.agreement,
        revocation=row.revocation,
        terms=json.loads(row.terms or "{}"),
        created_ms=row.created_ms,
        updated_ms=row.updated_ms,
    )


HandOver = Callable[[list[Pending]], None]


class NegotiationStore:
    """Negotiations on SQLite or PostgreSQL.

    With ``hand_over``, messages a transition queues are given to it as soon as the
    transition commits, to be sent at once; they are stored leased for ``lease_ms`` (as
    the outbox leases what it claims), so no outbox, of this process or a replica, takes
    them meanwhile, and they become due again if this process dies before they are sent.
    Without it, they are due at once and the outbox finds them on its next pass.
    """

    def __init__(
        self, db: Database, *, hand_over: HandOver | None = None, lease_ms: int = 30_000
    ) -> None:
        self._db = db
        self._hand_over = hand_over
        self._lease_ms = lease_ms

    def _queue(
        self, s: Session, pid: str, outgoing: Sequence[Outgoing], now_ms: int
    ) -> list[OutboxRow]:
        due_ms = now_ms + self._lease_ms if self._hand_over is not None else now_ms
        rows = [
            OutboxRow(
                message_id=msg.message_id,
                target=msg.target,
                method=msg.method,
                payload=msg.payload,
                negotiation_pid=pid,
                next_attempt_ms=due_ms,
                created_ms=now_ms,
            )
            for msg in outgoing
        ]
        s.add_all(rows)
        return rows

    def _handed_over(self, rows: list[OutboxRow]) -> None:
        """Give committed messages to ``hand_over`` (after the commit: never before)."""
        if self._hand_over is not None and rows:
            self._hand_over([pending_of(r) for r in rows])

    def create(
        self,
        *,
        role: str,
        counterparty: str,
        counterparty_pid: str,
        product: str,
        offer: str,
        purpose: str,
        state: State,
        now_ms: int,
        reasons: Sequence[str] = (),
        terms: dict[str, Any] | None = None,
        agreement: str | None = None,
        agreement_id: str | None = None,
        outgoing: Sequence[Outgoing] = (),
        inbox: tuple[str, str] | None = None,
        pid: str | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> Negotiation:
        """A new negotiation; ``ConflictError`` if the counterparty's pid is already known.

        A provider that agrees at once creates it already AGREED, with its agreement.
        """
        row = NegotiationRow(
            pid=pid or uuid.uuid4().hex,
            role=role,
            counterparty=counterparty,
            counterparty_pid=counterparty_pid or "",
            product=product,
            offer=offer,
            purpose=purpose,
            state=state.value,
            reasons=json.dumps(list(reasons)),
            terms=json.dumps(terms or {}, sort_keys=True),
            agreement=agreement,
            agreement_id=agreement_id,
            created_ms=now_ms,
            updated_ms=now_ms,
        )
        if not counterparty_pid:
            row.counterparty_pid = f"pending:{row.pid}"  # unique until the other side answers
        # ``before_commit`` (the audit entry) runs once the row is known to be new. On
        # PostgreSQL that is after the insert, which blocks and fails for a racing replica;
        # SQLite (one process) would hold its write lock against the log writer, so there
        # it runs first.
        late = self._db.dialect == "postgresql"
        if before_commit is not None and not late:
            before_commit()
        try:
            with self._db.session() as s:
                s.add(row)
                s.flush()
                queued = self._queue(s, row.pid, outgoing, now_ms)
                self._remember(s, inbox, now_ms)
                if before_commit is not None and late:
                    before_commit()
        except IntegrityError:
            raise ConflictError(
                f"{counterparty} already has a negotiation with process id {counterparty_pid}"
            ) from None
        self._handed_over(queued)
        return _negotiation(row)

    def get(self, pid: str) -> Negotiation:
        """One negotiation, or ``NotFound``."""
        with self._db.session() as s:
            row = s.get(NegotiationRow, pid)
            if row is None:
                raise NotFound(f"negotiation {pid!r} not found")
            return _negotiation(row)

    def find(self, role: str, counterparty: str, counterparty_pid: str) -> Negotiation | None:
        """The negotiation a counterparty's process id names, if any."""
        with self._db.session() as s:
            row = s.exec(
                select(NegotiationRow).where(
                    NegotiationRow.role == role,
                    NegotiationRow.counterparty == counterparty,
                    NegotiationRow.counterparty_pid == counterparty_pid,
                )
            ).first()
            return _negotiation(row) if row else None

    def by_agreement(self, agreement_id: str) -> Negotiation:
        """The negotiation that produced an agreement, or ``NotFound``."""
        with self._db.session() as s:
            row = s.exec(
                select(NegotiationRow).where(NegotiationRow.agreement_id == agreement_id)
            ).first()
            if row is None:
                raise NotFound(f"agreement {agreement_id!r} not found")
            return _negotiation(row)

    def list(self, state: State | None = None, role: str | None = None) -> list[Negotiation]:
        """Negotiations, newest first, optionally of one state and role."""
        with self._db.session() as s:
            query = select(NegotiationRow)
            if state is not None:
                query = query.where(NegotiationRow.state == state.value)
            if role is not None:
                query = query.where(NegotiationRow.role == role)
            rows = s.exec(query).all()
            return sorted((_negotiation(r) for r in rows), key=lambda n: -n.created_ms)

    def transition(
        self,
        pid: str,
        *steps: State,
        now_ms: int,
        counterparty_pid: str | None = None,
        agreement: str | None = None,
        agreement_id: str | None = None,
        revocation: str | None = None,
        reasons: Sequence[str] | None = None,
        outgoing: Sequence[Outgoing] = (),
        inbox: tuple[str, str] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> Negotiation:
        """Move through ``steps`` (each a protocol transition) and queue ``outgoing``, atomically.

        The update is a compare-and-set on the state read (the row is also locked on
        PostgreSQL), so of two replicas or threads moving one negotiation at once, exactly
        one succeeds; the other gets ``PreconditionFailed`` and nothing of it is stored.
        """
        try:
            with self._db.session() as s:
                row = s.get(NegotiationRow, pid, with_for_update=True)
                if row is None:
                    raise NotFound(f"negotiation {pid!r} not found")
                if inbox is not None and s.get(InboxRow, inbox[0]) is not None:
                    # A replica processed this very message while we waited for the row:
                    # the caller's retry will find it done and answer as it did.
                    raise Aborted(f"message {inbox[0]} was just processed")
                current = start = State(row.state)
                for step in steps:
                    check_transition(current, step)
                    current = step
                # The row is locked (PostgreSQL) and the move is valid: record it now, so a
                # replica that lost the race never writes an entry for it.
                if before_commit is not None:
                    before_commit()
                values: dict[str, object] = {"state": current.value, "updated_ms": now_ms}
                for name, value in (
                    ("counterparty_pid", counterparty_pid),
                    ("agreement", agreement),
                    ("agreement_id", agreement_id),
                    ("revocation", revocation),
                ):
                    if value is not None:
                        values[name] = value
                if reasons is not None:
                    values["reasons"] = json.dumps(list(reasons))
                table = NegotiationRow.__table__  # type: ignore[attr-defined]
                result: CursorResult[Any] = s.execute(  # type: ignore[assignment]
                    update(table)
                    .where(
                        table.c.pid == pid,
                        table.c.state == start.value,
                        table.c.updated_ms == row.updated_ms,
                    )
                    .values(**values)
                )
                changed = result.rowcount
                if changed != 1:
                    raise Aborted(
                        f"negotiation {pid} changed while this request was handled; retry"
                    )
                queued = self._queue(s, pid, outgoing, now_ms)
                self._remember(s, inbox, now_ms)
                s.flush()
                s.expire(row)
                s.refresh(row)
                moved = _negotiation(row)
        except OperationalError:
            # SQLite refuses to write from a snapshot another writer already changed.
            raise Aborted(
                f"negotiation {pid} changed while this request was handled; retry"
            ) from None
        self._handed_over(queued)
        return moved

    def set_revocation(
        self,
        pid: str,
        revocation: str,
        *,
        now_ms: int,
        outgoing: Sequence[Outgoing] = (),
        inbox: tuple[str, str] | None = None,
    ) -> Negotiation:
        """Record an agreement's revocation (the negotiation stays FINALIZED)."""
        with self._db.session() as s:
            row = s.get(NegotiationRow, pid, with_for_update=True)
            if row is None:
                raise NotFound(f"negotiation {pid!r} not found")
            row.revocation, row.updated_ms = revocation, now_ms
            s.add(row)
            queued = self._queue(s, pid, outgoing, now_ms)
            self._remember(s, inbox, now_ms)
            s.flush()
            revoked = _negotiation(row)
        self._handed_over(queued)
        return revoked

    def processed(self, message_id: str) -> bool:
        """Whether a received message was already processed."""
        with self._db.session() as s:
            return s.get(InboxRow, message_id) is not None

    @staticmethod
    def _remember(s: Session, inbox: tuple[str, str] | None, now_ms: int) -> None:
        if inbox is not None:
            s.add(InboxRow(message_id=inbox[0], sender=inbox[1], received_ms=now_ms))
