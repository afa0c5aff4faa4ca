"""Negotiation records, the outbox and the inbox, changed together in one transaction.

A state transition and the message it sends to the other side commit together (a
transactional outbox), so a crash can neither lose nor double a transition's message;
the inbox makes a repeated delivery of a message harmless.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError

from connector.errors import Aborted, ConflictError, NotFound, PreconditionFailed
from connector.negotiation.outbox import Pending, enqueue, mark_delivered
from connector.negotiation.states import FINAL, State, check_transition
from connector.store.database import Database, RawTransaction

__all__ = [
    "CONSUMER",
    "PROVIDER",
    "Negotiation",
    "NegotiationStore",
    "Outgoing",
    "page_position",
]

PROVIDER, CONSUMER = "provider", "consumer"
"""A negotiation's ``role``: ours, as the provider or the consumer of its product."""


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
    requester: dict[str, Any] | None = None
    """Provider side, while waiting for approval: the requesting subject and its
    certificate serial as verified at request time (the approval decides again with it)."""
    peer_address: str | None = None
    """Over the Dataspace Protocol binding: the other side's https address (the provider's
    binding, or the consumer's ``callbackAddress``); None: the negotiation runs over gRPC."""
    created_ms: int = 0
    updated_ms: int = 0


@dataclass(frozen=True)
class Outgoing:
    """A message to queue with a transition."""

    target: str
    method: str
    payload: bytes
    message_id: str = field(default_factory=lambda: uuid.uuid4().hex)


_COLUMNS = (
    "pid, role, counterparty, counterparty_pid, product, offer, purpose, state, reasons, "
    "agreement_id, agreement, revocation, terms, requester, peer_address, created_ms, updated_ms"
)
# Only these constant column names are ever formatted into SQL; values are parameters.
_SELECT = f"SELECT {_COLUMNS} FROM negotiation"  # noqa: S608


def _negotiation(row: tuple[Any, ...]) -> Negotiation:
    (pid, role, counterparty, counterparty_pid, product, offer, purpose, state, reasons,
     agreement_id, agreement, revocation, terms, requester, peer_address, created_ms,
     updated_ms) = row  # fmt: skip
    return Negotiation(
        pid=pid,
        role=role,
        counterparty=counterparty,
        counterparty_pid=counterparty_pid,
        product=product,
        offer=offer,
        purpose=purpose,
        state=State(state),
        reasons=tuple(json.loads(reasons)),
        agreement_id=agreement_id,
        agreement=agreement,
        revocation=revocation,
        terms=json.loads(terms or "{}"),
        requester=json.loads(requester) if requester else None,
        peer_address=peer_address,
        created_ms=int(created_ms),
        updated_ms=int(updated_ms),
    )


def page_position(n: Negotiation) -> tuple[str, str]:
    """Where ``n`` stands in the newest-first order ``page_before`` reads."""
    return str(n.created_ms), n.pid


HandOver = Callable[[list[Pending]], None]


class NegotiationStore:
    """Negotiations on SQLite or PostgreSQL.

    Every step of a negotiation reads and writes here, so statements go straight to the
    driver (``Database.transaction``) rather than through the ORM, which cost ten times
    the statement itself. The tables are the ORM models' (``connector.store.models``).

    With ``hand_over``, messages a transition queues are given to it as soon as the
    transition commits, to be sent at once; they are stored leased for ``lease_ms`` (as
    the outbox leases what it claims), so no outbox, of this process or a replica, takes
    them meanwhile, and they become due again if this process dies before they are sent.
    Without it, they are due at once and the outbox finds them on its next pass.

    With ``settle_in`` (``Outbox.settle_in``), every write here also marks the messages the
    outbox has delivered since the last one: those marks need no commit of their own.
    """

    def __init__(
        self,
        db: Database,
        *,
        hand_over: HandOver | None = None,
        lease_ms: int = 30_000,
        settle_in: Callable[[RawTransaction], None] | None = None,
    ) -> None:
        self._db = db
        self._hand_over = hand_over
        self._lease_ms = lease_ms
        self._settle_in = settle_in
        # The peer address and role of negotiations created here lately: fixed at
        # creation, and what the DSP delivery asks before every message (``peer``).
        self._peers: dict[str, tuple[str | None, str]] = {}
        self._peers_lock = threading.Lock()

    def _queue(
        self, tx: RawTransaction, pid: str, outgoing: Sequence[Outgoing], now_ms: int
    ) -> list[Pending]:
        due_ms = now_ms + self._lease_ms if self._hand_over is not None else now_ms
        queued = []
        for msg in outgoing:
            queued.append(
                enqueue(
                    tx,
                    message_id=msg.message_id,
                    target=msg.target,
                    method=msg.method,
                    payload=msg.payload,
                    negotiation_pid=pid,
                    due_ms=due_ms,
                    now_ms=now_ms,
                )
            )
        return queued

    def _handed_over(self, queued: list[Pending]) -> None:
        """Give committed messages to ``hand_over`` (after the commit: never before)."""
        if self._hand_over is not None and queued:
            self._hand_over(queued)

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
        requester: dict[str, Any] | None = None,
        agreement: str | None = None,
        agreement_id: str | None = None,
        outgoing: Sequence[Outgoing] = (),
        inbox: tuple[str, str] | None = None,
        pid: str | None = None,
        peer_address: str | None = None,
        before_commit: Callable[[RawTransaction], Any] | None = None,
    ) -> Negotiation:
        """A new negotiation; ``ConflictError`` if the counterparty's pid is already known.

        A provider that agrees at once creates it already AGREED, with its agreement.
        """
        pid = pid or uuid.uuid4().hex
        row = (
            pid,
            role,
            counterparty,
            counterparty_pid or f"pending:{pid}",  # unique until the other side answers
            product,
            offer,
            purpose,
            state.value,
            json.dumps(list(reasons)),
            agreement_id,
            agreement,
            None,
            json.dumps(terms or {}, sort_keys=True),
            json.dumps(requester, sort_keys=True) if requester is not None else None,
            peer_address,
            now_ms,
            now_ms,
        )
        try:
            with self._db.transaction() as tx:
                tx.execute(
                    f"INSERT INTO negotiation ({_COLUMNS}) VALUES ({', '.join('?' * 17)})",  # noqa: S608
                    row,
                ).close()
                queued = self._queue(tx, pid, outgoing, now_ms)
                self._remember(tx, inbox, now_ms)
                self._settled(tx)
                # The audit entries, in this transaction, once the row is known to be new
                # (on PostgreSQL the insert blocks, and then fails, for a racing replica).
                if before_commit is not None:
                    before_commit(tx)
        except IntegrityError:
            # A racing duplicate of the counterparty's process id, or a message id already
            # in the inbox — maybe another member's: say neither whose nor which.
            raise ConflictError(
                "this request repeats a process id or message id already used; send it "
                "with a new random message_id and consumer_pid"
            ) from None
        if peer_address:
            self._keep_peer(pid, (peer_address, role))
        self._handed_over(queued)
        return _negotiation(row)

    def _keep_peer(self, pid: str, peer: tuple[str | None, str]) -> None:
        with self._peers_lock:
            if len(self._peers) >= 4096:  # the negotiations in flight, bounded
                self._peers.pop(next(iter(self._peers)))
            self._peers[pid] = peer

    def peer(self, pid: str) -> tuple[str | None, str]:
        """The peer address and our role of negotiation ``pid`` (or ``NotFound``): both
        fixed when it was created, so read from the row only if it was not created here
        lately."""
        with self._peers_lock:
            known = self._peers.get(pid)
        if known is None:
            n = self.get(pid)
            known = (n.peer_address, n.role)
            self._keep_peer(pid, known)
        return known

    def get(self, pid: str) -> Negotiation:
        """One negotiation, or ``NotFound``."""
        with self._db.transaction() as tx:
            row = tx.one(f"{_SELECT} WHERE pid = ?", (pid,))
        if row is None:
            raise NotFound(f"negotiation {pid!r} not found")
        return _negotiation(row)

    def get_noting(self, pid: str, message_id: str) -> tuple[Negotiation, bool]:
        """One negotiation (or ``NotFound``), and whether ``message_id`` was already
        processed: what a receiver asks first, in one read."""
        with self._db.transaction() as tx:
            # The inbox first. The move that takes a message commits its inbox row and the
            # negotiation's new state together, so a message seen here has its move in the
            # row read next, also where each statement reads a snapshot of its own
            # (PostgreSQL's READ COMMITTED, another replica moving in between). The row
            # first, a repeat could be answered with the state from before its move.
            seen = self._seen(tx, message_id)
            row = tx.one(f"{_SELECT} WHERE pid = ?", (pid,))
        if row is None:
            raise NotFound(f"negotiation {pid!r} not found")
        return _negotiation(row), seen

    def find(self, role: str, counterparty: str, counterparty_pid: str) -> Negotiation | None:
        """The negotiation a counterparty's process id names, if any."""
        with self._db.transaction() as tx:
            row = tx.one(
                f"{_SELECT} WHERE role = ? AND counterparty = ? AND counterparty_pid = ?",
                (role, counterparty, counterparty_pid),
            )
        return _negotiation(row) if row else None

    def by_agreement(self, agreement_id: str) -> Negotiation:
        """The negotiation that produced an agreement, or ``NotFound``."""
        with self._db.transaction() as tx:
            row = tx.one(f"{_SELECT} WHERE agreement_id = ?", (agreement_id,))
        if row is None:
            raise NotFound(f"agreement {agreement_id!r} not found")
        return _negotiation(row)

    def list(self, state: State | None = None, role: str | None = None) -> list[Negotiation]:
        """Negotiations, newest first, optionally of one state and role."""
        where, params = [], []
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if role is not None:
            where.append("role = ?")
            params.append(role)
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        with self._db.transaction() as tx:
            rows = tx.all(sql, params)
        return sorted((_negotiation(r) for r in rows), key=lambda n: -n.created_ms)

    def page_before(
        self,
        before: Sequence[str],
        limit: int,
        *,
        state: State | None = None,
        role: str | None = None,
        agreements: bool = False,
    ) -> builtins.list[Negotiation]:
        """Up to ``limit`` negotiations, newest first, after position ``before`` (its
        ``created_ms`` and pid, as :func:`page_position` gives; empty: from the newest), of
        one state and role, or only those with an agreement."""
        where, params = [], []
        if before:
            created, pid = int(before[0]), before[1]
            where.append("(created_ms < ? OR (created_ms = ? AND pid < ?))")
            params.extend([created, created, pid])
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if role is not None:
            where.append("role = ?")
            params.append(role)
        if agreements:
            where.append("agreement_id IS NOT NULL AND agreement_id <> ''")
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        with self._db.transaction() as tx:
            rows = tx.all(f"{sql} ORDER BY created_ms DESC, pid DESC LIMIT ?", [*params, limit])
        return [_negotiation(r) for r in rows]

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
        terms: dict[str, Any] | None = None,
        offer: str | None = None,
        purpose: str | None = None,
        requester: dict[str, Any] | None = None,
        outgoing: Sequence[Outgoing] = (),
        inbox: tuple[str, str] | None = None,
        delivered: int | None = None,
        expect: Callable[[Negotiation], bool] | None = None,
        prepare: Callable[[Negotiation], Callable[[RawTransaction], Any]] | None = None,
    ) -> Negotiation:
        """Move through ``steps`` (each a protocol transition) and queue ``outgoing``, atomically.

        ``offer`` and ``purpose``: the terms on the table now (a counter-offer or a
        counter-request replaces them); ``requester``: kept again for an approval to come.

        ``delivered``: an outbox row whose answer this transition takes, marked delivered
        in the same transaction (the outbox then has nothing to settle). ``expect``: a
        check of the negotiation as read here; ``PreconditionFailed`` when it fails.
        ``prepare`` is called with the negotiation as read, before anything is
        written (on SQLite the write lock is taken at the first write and held until the
        commit: prepare there), and what it returns is called last, within the transaction.

        The update is a compare-and-set on the state read (the row is also locked on
        PostgreSQL), so of two replicas or threads moving one negotiation at once, exactly
        one succeeds; the other gets ``PreconditionFailed`` and nothing of it is stored.
        """
        lock = " FOR UPDATE" if self._db.postgres else ""
        try:
            with self._db.transaction() as tx:
                row = tx.one(f"{_SELECT} WHERE pid = ?{lock}", (pid,))
                if row is None:
                    raise NotFound(f"negotiation {pid!r} not found")
                if inbox is not None and self._seen(tx, inbox[0]):
                    # A replica processed this very message while we waited for the row:
                    # the caller's retry will find it done and answer as it did.
                    raise Aborted(f"message {inbox[0]} was just processed")
                n = _negotiation(row)
                if expect is not None and not expect(n):
                    raise PreconditionFailed(f"negotiation {pid} is not the one this is for")
                current = n.state
                for step in steps:
                    check_transition(current, step)
                    current = step
                last = prepare(n) if prepare is not None else None
                values: dict[str, Any] = {"state": current.value, "updated_ms": now_ms}
                for name, value in (
                    ("counterparty_pid", counterparty_pid),
                    ("agreement", agreement),
                    ("agreement_id", agreement_id),
                    ("revocation", revocation),
                    ("offer", offer),
                    ("purpose", purpose),
                ):
                    if value is not None:
                        values[name] = value
                if reasons is not None:
                    values["reasons"] = json.dumps(list(reasons))
                if terms is not None:
                    values["terms"] = json.dumps(terms, sort_keys=True)
                if requester is not None:
                    values["requester"] = json.dumps(requester, sort_keys=True)
                elif n.requester is not None and (current in FINAL or current == State.AGREED):
                    values["requester"] = None  # kept only while waiting for approval
                cur = tx.execute(
                    f"UPDATE negotiation SET {', '.join(f'{k} = ?' for k in values)}"  # noqa: S608
                    " WHERE pid = ? AND state = ? AND updated_ms = ?",
                    (*values.values(), pid, n.state.value, n.updated_ms),
                )
                changed = cur.rowcount
                cur.close()
                if changed != 1:
                    raise Aborted(
                        f"negotiation {pid} changed while this request was handled; retry"
                    )
                queued = self._queue(tx, pid, outgoing, now_ms)
                self._remember(tx, inbox, now_ms)
                if delivered is not None:
                    mark_delivered(tx, delivered)
                self._settled(tx)
                # Last, once the compare-and-set has won: the audit entries commit with the
                # move or not at all, and the log's sequence is held only for the commit.
                if last is not None:
                    last(tx)
        except OperationalError:
            # SQLite refuses to write from a snapshot another writer already changed.
            raise Aborted(
                f"negotiation {pid} changed while this request was handled; retry"
            ) from None
        self._handed_over(queued)
        moved: dict[str, Any] = {"state": current, "updated_ms": now_ms}
        moved.update(
            {k: v for k, v in values.items() if k not in ("state", "reasons", "terms", "requester")}
        )
        if reasons is not None:
            moved["reasons"] = tuple(reasons)
        if terms is not None:
            moved["terms"] = dict(terms)
        if "requester" in values:
            moved["requester"] = requester
        return dataclasses.replace(n, **moved)

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
        lock = " FOR UPDATE" if self._db.postgres else ""
        with self._db.transaction() as tx:
            row = tx.one(f"{_SELECT} WHERE pid = ?{lock}", (pid,))
            if row is None:
                raise NotFound(f"negotiation {pid!r} not found")
            tx.execute(
                "UPDATE negotiation SET revocation = ?, updated_ms = ? WHERE pid = ?",
                (revocation, now_ms, pid),
            ).close()
            queued = self._queue(tx, pid, outgoing, now_ms)
            self._remember(tx, inbox, now_ms)
            self._settled(tx)
        self._handed_over(queued)
        return dataclasses.replace(_negotiation(row), revocation=revocation, updated_ms=now_ms)

    def _settled(self, tx: RawTransaction) -> None:
        """Mark, in this write, what the outbox delivered since the last one."""
        if self._settle_in is not None:
            self._settle_in(tx)

    def processed(self, message_id: str) -> bool:
        """Whether a received message was already processed."""
        with self._db.transaction() as tx:
            return self._seen(tx, message_id)

    @staticmethod
    def _seen(tx: RawTransaction, message_id: str) -> bool:
        return tx.one("SELECT 1 FROM inbox WHERE message_id = ?", (message_id,)) is not None

    @staticmethod
    def _remember(tx: RawTransaction, inbox: tuple[str, str] | None, now_ms: int) -> None:
        if inbox is not None:
            tx.execute(
                "INSERT INTO inbox (message_id, sender, received_ms) VALUES (?, ?, ?)",
                (inbox[0], inbox[1], now_ms),
            ).close()
