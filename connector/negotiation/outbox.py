"""Delivering queued messages to other connectors: bounded retries with backoff.

The outbox is rows in the connector's database written with the transition that caused
them (``enqueue``, within that transition's transaction), so a restart resumes delivery
where it stopped. On PostgreSQL, replicas claim rows with ``FOR UPDATE SKIP LOCKED``, so
each message goes out once at a time. Negotiations queue their protocol messages here,
and the consumer of a computation its countersignature (``connector.compute.client``);
the node's delivery function tells them apart by ``method``.

A message delivered without an answer that changes anything (the agreement pushed to a
DSP consumer, the FINALIZED event, a termination) is marked delivered with the next write
to the database that the negotiations make (``settle_in``, which the store calls in its
transactions), or by the outbox's next pass: not in a commit of its own. The mark tells no
one anything, so it need not be durable before anything else; should this process stop
before it is written, the message is sent again once its lease ends, and receivers drop
repeats (by message id over gRPC, by their content over DSP).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from connector.clock import Clock
from connector.errors import ConnectorError
from connector.store.database import Database, RawTransaction

__all__ = ["Outbox", "Pending", "enqueue", "mark_delivered", "requeue"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pending:
    """A message due for delivery."""

    id: int
    message_id: str
    target: str
    method: str
    payload: bytes
    negotiation_pid: str
    attempts: int


def enqueue(
    tx: RawTransaction,
    *,
    message_id: str,
    target: str,
    method: str,
    payload: bytes,
    due_ms: int,
    now_ms: int,
    negotiation_pid: str = "",
) -> Pending:
    """Queue one message within ``tx`` (the transaction of the change that owes it); it
    is due at ``due_ms`` (later than now: leased to the caller, who sends it itself)."""
    row = tx.one(
        "INSERT INTO outbox (message_id, target, method, payload, negotiation_pid,"
        " attempts, next_attempt_ms, status, last_error, created_ms)"
        " VALUES (?, ?, ?, ?, ?, 0, ?, 'pending', '', ?) RETURNING id",
        (message_id, target, method, payload, negotiation_pid, due_ms, now_ms),
    )
    assert row is not None
    return Pending(int(row[0]), message_id, target, method, payload, negotiation_pid, 0)


def requeue(
    tx: RawTransaction,
    *,
    message_id: str,
    target: str,
    method: str,
    payload: bytes,
    now_ms: int,
    leased_too: bool,
) -> None:
    """Make a message due now: queued if it has no row, or its row pending again (its
    attempts counted afresh) if the outbox gave up on it or settled it; a pending row is
    left to its lease unless ``leased_too`` (one process owns the database: the lease is
    its own, from before it stopped). Idempotent, so replicas may all do it at start."""
    again = "" if leased_too else " WHERE outbox.status <> 'pending'"
    tx.execute(
        "INSERT INTO outbox (message_id, target, method, payload, negotiation_pid,"  # noqa: S608
        " attempts, next_attempt_ms, status, last_error, created_ms)"
        " VALUES (?, ?, ?, ?, '', 0, ?, 'pending', '', ?)"
        " ON CONFLICT (message_id) DO UPDATE SET status = 'pending', attempts = 0,"
        f" next_attempt_ms = excluded.next_attempt_ms{again}",
        (message_id, target, method, payload, now_ms, now_ms),
    ).close()


def mark_delivered(tx: RawTransaction, row_id: int) -> None:
    """Settle a message as delivered within ``tx`` (the transaction that took its answer:
    the outbox then has nothing to settle)."""
    tx.execute("UPDATE outbox SET status = 'delivered' WHERE id = ?", (row_id,)).close()


Deliver = Callable[[Pending], bool | None]
"""Sends one message; ``True`` when it also marked the row delivered (with what the
answer changed), so there is nothing left to settle."""


class Outbox:
    """Sends due messages until delivered, or gives up after ``max_attempts``."""

    def __init__(
        self,
        db: Database,
        deliver: Deliver,
        clock: Clock,
        *,
        max_attempts: int = 12,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        on_give_up: Callable[[Pending, str], None] | None = None,
        workers: int = 8,
        poll_seconds: float = 0.5,
        settle_later: bool = False,
    ) -> None:
        """``settle_later``: mark messages delivered with the next write that calls
        ``settle_in`` (or the next pass), not each in a commit of its own (see the
        module's docstring); for an outbox whose store calls ``settle_in``."""
        self._db = db
        self._deliver = deliver
        self._clock = clock
        self._max_attempts = max_attempts
        self._base = base_delay
        self._max_delay = max_delay
        self._on_give_up = on_give_up
        self._workers = workers
        self._poll = poll_seconds  # how often an idle loop looks for due messages
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tds-outbox")
        self._wake = threading.Event()
        self._in_flight: set[int] = set()  # ids being sent by this process
        self._in_flight_lock = threading.Lock()
        self._starved = False  # a pass found every worker busy: wake it when one is free
        self._settle_later = settle_later
        # Delivered, not yet marked so: queued for the next write (under _in_flight_lock).
        self._delivered: list[int] = []
        # Those, and the ones a transaction is marking now: no pass may send them again.
        self._unsettled: set[int] = set()
        self._here = threading.local()  # ``inline`` is in force on this thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Deliver in the background until ``stop``."""
        self._thread = threading.Thread(target=self._run, name="tds-outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop delivering (pending messages stay queued for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=True)
        if self._delivered:
            try:
                with self._db.transaction() as tx:
                    self.settle_in(tx)
            except Exception:  # the marks are lost: those messages go again after their lease
                log.warning("outbox could not mark its last deliveries", exc_info=True)

    def settle_in(self, tx: RawTransaction) -> None:
        """Mark the messages delivered since the last such write, within ``tx`` (a write
        transaction of the caller's own: the mark then costs no commit of its own). If
        ``tx`` rolls back, they wait for the next one."""
        with self._in_flight_lock:
            ids, self._delivered = self._delivered, []
        if not ids:
            return
        marks = ", ".join("?" * len(ids))
        tx.execute(
            f"UPDATE outbox SET status = 'delivered' WHERE id IN ({marks})",  # noqa: S608
            ids,
        ).close()

        def ended(committed: bool) -> None:
            with self._in_flight_lock:
                if committed:
                    self._unsettled.difference_update(ids)
                else:
                    self._delivered.extend(ids)

        tx.on_end(ended)

    def _run(self) -> None:
        while not self._stop.is_set():
            # Clear before looking, so a poke during the pass is never lost.
            self._wake.clear()
            try:
                busy = self.deliver_due()
            except Exception:  # the loop must survive anything; the rows stay queued
                log.exception("outbox pass failed")
                busy = False
            if not busy:
                self._wake.wait(self._poll)

    def deliver_due(self, limit: int = 20, lease_seconds: float = 30.0) -> bool:
        """Start sending every due message not already on its way; return whether any was.

        Messages are claimed in a short transaction (a lease: if this process dies while
        sending, they become due again), sent with no transaction open, and settled one by
        one. A message may thus arrive twice; receivers drop repeats by message id.
        It returns as soon as the sends are handed to the workers: a slow peer then holds
        up only its own messages, and a message queued meanwhile goes out at once instead
        of after the whole batch.
        """
        with self._in_flight_lock:
            sending = len(self._in_flight)
            room = min(limit, self._workers - sending)
            if room <= 0:
                self._starved = True  # the next send to finish pokes the loop
                return False
            # Marked delivered in this pass's transaction, or by one under way.
            busy = [*self._in_flight, *self._unsettled]
        now_ms = int(self._clock.now() * 1000)
        skip = f" AND id NOT IN ({', '.join('?' * len(busy))})" if busy else ""
        claim = " FOR UPDATE SKIP LOCKED" if self._db.postgres else ""
        with self._db.transaction() as tx:
            self.settle_in(tx)
            rows = tx.all(
                "SELECT id, message_id, target, method, payload, negotiation_pid, attempts"  # noqa: S608
                f" FROM outbox WHERE status = 'pending' AND next_attempt_ms <= ?{skip}"
                f" ORDER BY id LIMIT ?{claim}",
                (now_ms, *busy, room),
            )
            due = [Pending(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6]) for r in rows]
            if self._db.postgres and due:
                # Replicas share the table: a lease keeps the others off these rows.
                marks = ", ".join("?" * len(due))
                tx.execute(
                    f"UPDATE outbox SET next_attempt_ms = ? WHERE id IN ({marks})",  # noqa: S608
                    (now_ms + int(lease_seconds * 1000), *(p.id for p in due)),
                ).close()
        # One process per SQLite file: an in-memory claim is enough (and saves a commit).
        return self._start(due, now_ms)

    def dispatch(self, messages: list[Pending]) -> None:
        """Send messages just committed (stored leased to this process) without a pass
        (within ``held`` on this thread: kept back for the caller instead)."""
        kept = getattr(self._here, "held", None)
        if kept is not None:
            kept.extend(messages)
            return
        self._start(messages, int(self._clock.now() * 1000))

    @contextlib.contextmanager
    def held(self) -> Iterator[list[Pending]]:
        """Within this block, messages dispatched from this thread are not sent but added
        to the list it gives, for the caller to ``dispatch`` when it chooses (the DSP
        binding: once the answer to the request that queued them is written). They are
        committed like any other: if they never are dispatched, the outbox's passes send
        them once their lease has passed."""
        was = getattr(self._here, "held", None)
        kept: list[Pending] = []
        self._here.held = kept
        try:
            yield kept
        finally:
            self._here.held = was

    @contextlib.contextmanager
    def inline(self) -> Iterator[None]:
        """Within this block, messages dispatched from this thread are sent on it.

        For a caller that waits for the outcome anyway (and for the workers themselves,
        for the message that taking an answer queues): handing each message to another
        thread, and waking the caller when it is done, cost more than the send. A message
        that fails is settled as any other, and retried by the outbox's passes.
        """
        was = getattr(self._here, "inline", False)
        self._here.inline = True
        try:
            yield
        finally:
            self._here.inline = was

    def _start(self, messages: list[Pending], now_ms: int) -> bool:
        """Send, or hand to the workers, each message not already on its way; whether any was."""
        with self._in_flight_lock:
            fresh = [p for p in messages if p.id not in self._in_flight]
            self._in_flight.update(p.id for p in fresh)
        if getattr(self._here, "inline", False) and not self._stop.is_set():
            for p in fresh:
                self._send(p, now_ms)
            return bool(fresh)
        # Messages to different negotiations are independent: send them side by side.
        for i, p in enumerate(fresh):
            try:
                self._pool.submit(self._send, p, now_ms)
            except RuntimeError:  # stopping: what is left stays queued for the next start
                with self._in_flight_lock:
                    self._in_flight.difference_update(q.id for q in fresh[i:])
                return i > 0
        return bool(fresh)

    def _send(self, pending: Pending, now_ms: int) -> None:
        try:
            with self.inline():  # what taking the answer queues goes out on this thread
                self._send_once(pending, now_ms)
        finally:
            # (a message left to ``settle_in`` is in ``_unsettled`` by now: no pass
            # takes it again once it leaves ``_in_flight``)
            with self._in_flight_lock:
                self._in_flight.discard(pending.id)
                starved, self._starved = self._starved, False
            if starved:
                self._wake.set()  # room for the due messages a pass had to leave

    def _send_once(self, pending: Pending, now_ms: int) -> None:
        try:
            if self._deliver(pending):
                return  # settled in the transaction that took the answer
        except ConnectorError as exc:
            error = str(exc)[:1000] or exc.__class__.__name__
            self._settle(pending, error, now_ms, give_up=getattr(exc, "permanent", False))
            return
        except Exception as exc:  # a bug in delivery must not kill the loop; retry later
            log.exception("delivery failed unexpectedly")
            self._settle(pending, f"{exc.__class__.__name__}: {exc}"[:1000], now_ms)
            return
        self._settle(pending, "", now_ms)

    def _settle(self, pending: Pending, error: str, now_ms: int, give_up: bool = False) -> None:
        if not error and self._settle_later:
            with self._in_flight_lock:
                self._delivered.append(pending.id)
                self._unsettled.add(pending.id)
            return
        lock = " FOR UPDATE" if self._db.postgres else ""
        status = "delivered"
        with self._db.transaction() as tx:
            row = tx.one(
                f"SELECT attempts, target, method FROM outbox WHERE id = ?{lock}",  # noqa: S608
                (pending.id,),
            )
            if row is None:
                return
            attempts, target, method = row
            if not error:
                tx.execute(
                    "UPDATE outbox SET status = 'delivered' WHERE id = ?", (pending.id,)
                ).close()
            else:
                attempts += 1
                status = "pending"
                next_ms = now_ms
                if give_up or attempts >= self._max_attempts:
                    status = "failed"
                    log.error(
                        "outbox gave up",
                        extra={"target": target, "method": method, "reason": error},
                    )
                else:
                    delay = min(self._base * 2 ** (attempts - 1), self._max_delay)
                    next_ms = now_ms + int(delay * 1000)
                tx.execute(
                    "UPDATE outbox SET attempts = ?, last_error = ?, status = ?,"
                    " next_attempt_ms = ? WHERE id = ?",
                    (attempts, error, status, next_ms, pending.id),
                ).close()
        if error and status == "failed" and self._on_give_up:
            self._on_give_up(pending, error)
