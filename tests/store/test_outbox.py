"""The outbox: messages a transition commits go out at once, exactly once per process, and
what was never sent (a process that died) becomes due again; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from connector.clock import FixedClock
from connector.errors import PreconditionFailed, Unavailable
from connector.negotiation.outbox import Outbox, Pending
from connector.negotiation.states import State
from connector.negotiation.store import NegotiationStore, Outgoing
from connector.store.database import Database

NOW_MS = 1_800_000_000_000
LEASE_MS = 30_000


class Receiver:
    """Delivery that records what it was given, and can be told to fail or to wait."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail = False
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()

    def __call__(self, pending: Pending) -> None:
        self.release.wait(10)
        if self.fail:
            raise Unavailable("peer down")
        with self.lock:
            self.sent.append(pending.message_id)


def status(db: Database, message_id: str) -> tuple[str, int]:
    with db.engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, next_attempt_ms FROM outbox WHERE message_id = :m"),
            {"m": message_id},
        ).one()
    return str(row[0]), int(row[1])


def settled(outbox: Outbox, db: Database, message_id: str, want: str) -> None:
    for _ in range(200):
        if status(db, message_id)[0] == want:
            return
        threading.Event().wait(0.02)
    raise AssertionError(f"{message_id} never became {want}: {status(db, message_id)}")


def request(store: NegotiationStore, message_id: str) -> None:
    store.create(
        role="consumer",
        counterparty="gov",
        counterparty_pid="",
        product="p",
        offer="o",
        purpose="research",
        state=State.REQUESTED,
        now_ms=NOW_MS,
        outgoing=[Outgoing("gov", "RequestContract", b"payload", message_id)],
    )


def test_a_committed_message_is_handed_over_once_and_sent_once(db: Database) -> None:
    receiver, clock = Receiver(), FixedClock(NOW_MS / 1000)
    outbox = Outbox(db, receiver, clock)
    seen_in_db: list[tuple[str, int]] = []

    def hand_over(messages: list[Pending]) -> None:
        # Called after the commit: the row is there for any other connection to see.
        seen_in_db.extend(status(db, m.message_id) for m in messages)
        outbox.dispatch(messages)
        outbox.dispatch(messages)  # a repeat while in flight sends nothing more

    store = NegotiationStore(db, hand_over=hand_over, lease_ms=LEASE_MS)
    receiver.release.clear()
    request(store, "m-1")
    assert seen_in_db == [("pending", NOW_MS + LEASE_MS)]
    assert not outbox.deliver_due()  # leased to this process: no pass takes it
    receiver.release.set()
    settled(outbox, db, "m-1", "delivered")
    assert receiver.sent == ["m-1"]
    clock.advance(LEASE_MS / 1000 + 1)
    assert not outbox.deliver_due()  # delivered is delivered
    outbox.stop()
    assert receiver.sent == ["m-1"]


def test_a_message_never_sent_becomes_due_when_its_lease_ends(db: Database) -> None:
    receiver, clock = Receiver(), FixedClock(NOW_MS / 1000)
    outbox = Outbox(db, receiver, clock)
    store = NegotiationStore(db, hand_over=lambda messages: None, lease_ms=LEASE_MS)
    request(store, "m-2")  # committed, then the process "died" before sending
    assert not outbox.deliver_due()
    clock.advance(LEASE_MS / 1000)
    assert outbox.deliver_due()
    settled(outbox, db, "m-2", "delivered")
    outbox.stop()
    assert receiver.sent == ["m-2"]


def test_a_failed_send_is_retried_with_backoff(db: Database) -> None:
    receiver, clock = Receiver(), FixedClock(NOW_MS / 1000)
    outbox = Outbox(db, receiver, clock, base_delay=0.5)
    store = NegotiationStore(db, hand_over=outbox.dispatch, lease_ms=LEASE_MS)
    receiver.fail = True
    request(store, "m-3")
    for _ in range(200):
        if status(db, "m-3")[1] == NOW_MS + 500:
            break
        threading.Event().wait(0.02)
    assert status(db, "m-3") == ("pending", NOW_MS + 500)  # next try in 0.5 s, not the lease
    receiver.fail = False
    clock.advance(0.5)
    # The failed send's worker lets go of the message just after its row is settled.
    assert any(outbox.deliver_due() or threading.Event().wait(0.02) for _ in range(200))
    settled(outbox, db, "m-3", "delivered")
    outbox.stop()


def test_an_answer_taken_with_its_transition_leaves_nothing_to_settle(db: Database) -> None:
    """The transition that takes an answer marks the message delivered itself (one commit,
    not two); the outbox then writes nothing more for it."""
    clock = FixedClock(NOW_MS / 1000)
    done = threading.Event()
    store_box: list[NegotiationStore] = []

    def deliver(pending: Pending) -> bool:
        store_box[0].transition(
            pending.negotiation_pid, now_ms=NOW_MS + 1, counterparty_pid="p-1",
            delivered=pending.id,
        )  # fmt: skip
        done.set()
        return True

    outbox = Outbox(db, deliver, clock)
    store = NegotiationStore(db, hand_over=outbox.dispatch, lease_ms=LEASE_MS)
    store_box.append(store)
    settles: list[Pending] = []
    outbox._settle = lambda pending, *args, **kwargs: settles.append(pending)  # type: ignore[method-assign]
    request(store, "m-5")
    assert done.wait(10)
    outbox.stop()
    assert status(db, "m-5")[0] == "delivered" and settles == []
    assert store.list()[0].counterparty_pid == "p-1"


def test_a_refused_transition_hands_over_nothing(db: Database) -> None:
    handed: list[Pending] = []
    store = NegotiationStore(db, hand_over=handed.extend, lease_ms=LEASE_MS)
    n = store.create(
        role="provider",
        counterparty="a",
        counterparty_pid="c-1",
        product="p",
        offer="o",
        purpose="research",
        state=State.REQUESTED,
        now_ms=NOW_MS,
    )
    with pytest.raises(PreconditionFailed):
        store.transition(
            n.pid,
            State.FINALIZED,
            now_ms=NOW_MS,
            outgoing=[Outgoing("a", "Finalize", b"x", "m-4")],
        )
    assert handed == []
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM outbox")).scalar() == 0


def test_dispatch_after_stop_leaves_the_message_queued(db: Database) -> None:
    receiver, clock = Receiver(), FixedClock(NOW_MS / 1000)
    outbox = Outbox(db, receiver, clock)
    outbox.stop()
    store = NegotiationStore(db, hand_over=outbox.dispatch, lease_ms=LEASE_MS)
    request(store, "m-5")  # the transition still succeeds
    assert status(db, "m-5") == ("pending", NOW_MS + LEASE_MS)
    assert receiver.sent == []


def test_inline_sends_on_the_calling_thread_and_chains_on_it(db: Database) -> None:
    """Inside ``inline`` a committed message goes out before the transition returns, on
    the caller's thread; the message taking its answer queues goes out on that thread too
    (also on a worker's, outside ``inline``)."""
    clock = FixedClock(NOW_MS / 1000)
    threads: dict[str, str] = {}
    store_box: list[NegotiationStore] = []

    def deliver(pending: Pending) -> bool:
        threads[pending.message_id] = threading.current_thread().name
        if pending.method == "RequestContract":  # the answer moves it and queues a reply
            store_box[0].transition(
                pending.negotiation_pid, State.TERMINATED, now_ms=NOW_MS + 1,
                delivered=pending.id,
                outgoing=[Outgoing("gov", "Terminate", b"x", pending.message_id + "-reply")],
            )  # fmt: skip
            return True
        return False

    outbox = Outbox(db, deliver, clock)
    store = NegotiationStore(db, hand_over=outbox.dispatch, lease_ms=LEASE_MS)
    store_box.append(store)
    with outbox.inline():
        request(store, "m-6")
    me = threading.current_thread().name
    assert threads == {"m-6": me, "m-6-reply": me}  # both sent before request() returned
    assert status(db, "m-6")[0] == "delivered" and status(db, "m-6-reply")[0] == "delivered"

    request(store, "m-7")  # outside inline: a worker sends it, and then its reply
    for _ in range(200):
        if "m-7-reply" in threads:
            break
        threading.Event().wait(0.02)
    settled(outbox, db, "m-7-reply", "delivered")
    outbox.stop()
    assert threads["m-7"].startswith("tds-outbox") and threads["m-7-reply"] == threads["m-7"]


def test_held_keeps_committed_messages_back_until_dispatched(db: Database) -> None:
    """Inside ``held`` a committed message is kept in its list, not sent (not even inside
    ``inline``), until the caller dispatches it; one never dispatched is still committed,
    and due to the outbox's passes after its lease."""
    receiver, clock = Receiver(), FixedClock(NOW_MS / 1000)
    outbox = Outbox(db, receiver, clock)
    store = NegotiationStore(db, hand_over=outbox.dispatch, lease_ms=LEASE_MS)
    with outbox.inline(), outbox.held() as kept:
        request(store, "m-h1")
    assert [p.message_id for p in kept] == ["m-h1"] and receiver.sent == []
    assert status(db, "m-h1") == ("pending", NOW_MS + LEASE_MS)
    request(store, "m-h2")  # outside: sent at once, as before
    with outbox.inline():
        outbox.dispatch(kept)
    settled(outbox, db, "m-h1", "delivered")
    settled(outbox, db, "m-h2", "delivered")
    with outbox.held():
        request(store, "m-h3")  # kept back, and then never dispatched
    assert not outbox.deliver_due()  # leased to this process for LEASE_MS
    clock.advance(LEASE_MS / 1000)
    assert outbox.deliver_due()
    settled(outbox, db, "m-h3", "delivered")
    outbox.stop()
    assert sorted(receiver.sent) == ["m-h1", "m-h2", "m-h3"]


def test_a_failed_inline_send_is_left_to_the_outbox(db: Database) -> None:
    receiver, clock = Receiver(), FixedClock(NOW_MS / 1000)
    outbox = Outbox(db, receiver, clock, base_delay=0.5)
    store = NegotiationStore(db, hand_over=outbox.dispatch, lease_ms=LEASE_MS)
    receiver.fail = True
    with outbox.inline():
        request(store, "m-8")  # the transition stands; the send failed
    assert status(db, "m-8") == ("pending", NOW_MS + 500)  # settled for a retry at once
    receiver.fail = False
    clock.advance(0.5)
    assert outbox.deliver_due()
    settled(outbox, db, "m-8", "delivered")
    outbox.stop()
    assert receiver.sent == ["m-8"]


def test_a_pass_that_found_every_worker_busy_is_woken_when_one_is_free(db: Database) -> None:
    receiver, clock = Receiver(), FixedClock(NOW_MS / 1000)
    # An idle loop looks again only after a minute: only a poke delivers m-10 in time.
    outbox = Outbox(db, receiver, clock, workers=1, poll_seconds=60)
    store = NegotiationStore(db, hand_over=outbox.dispatch, lease_ms=LEASE_MS)
    receiver.release.clear()
    request(store, "m-9")  # holds the only worker
    for _ in range(200):
        if outbox._in_flight:
            break
        threading.Event().wait(0.01)
    outbox.start()
    # A message for the next pass, due at once; the loop finds no free worker.
    NegotiationStore(db, hand_over=None).create(
        role="consumer", counterparty="gov", counterparty_pid="", product="p", offer="o",
        purpose="research", state=State.REQUESTED, now_ms=NOW_MS,
        outgoing=[Outgoing("gov", "RequestContract", b"payload", "m-10")],
    )  # fmt: skip
    outbox._wake.set()
    for _ in range(200):
        if outbox._starved:
            break
        threading.Event().wait(0.01)
    assert outbox._starved
    receiver.release.set()
    settled(outbox, db, "m-10", "delivered")  # woken by the send that finished
    outbox.stop()
    assert receiver.sent == ["m-9", "m-10"]


def commits(db: Database) -> list[str]:
    """Record the statements that end a write: the outbox's own settles are UPDATEs of
    outbox rows in a transaction of their own."""
    seen: list[str] = []
    original = db.transaction

    import contextlib

    @contextlib.contextmanager
    def counted(**kwargs: bool):  # type: ignore[no-untyped-def]
        with original(**kwargs) as tx:
            executed = tx.execute

            def execute(sql: str, params: tuple[object, ...] = ()) -> object:
                seen.append(sql.split()[0].upper() + " " + sql.split()[1])
                return executed(sql, params)

            tx.execute = execute  # type: ignore[method-assign]
            yield tx
            seen.append("COMMIT")

    db.transaction = counted  # type: ignore[method-assign]
    return seen


def test_a_delivery_is_marked_with_the_next_negotiation_write_not_a_commit_of_its_own(
    db: Database,
) -> None:
    """With ``settle_later`` a message sent without an answer to take is marked delivered
    by the store's next write (or the outbox's next pass, or its stop), never alone; no
    pass sends it again meanwhile, and a write that rolls back leaves it for the next."""
    receiver, clock = Receiver(), FixedClock(NOW_MS / 1000)
    outbox = Outbox(db, receiver, clock, settle_later=True)
    store = NegotiationStore(
        db, hand_over=outbox.dispatch, lease_ms=LEASE_MS, settle_in=outbox.settle_in
    )
    with outbox.inline():
        request(store, "m-9")  # sent before request() returns; not marked yet
    assert receiver.sent == ["m-9"]
    assert status(db, "m-9") == ("pending", NOW_MS + LEASE_MS)
    clock.advance(LEASE_MS / 1000 + 1)  # even past its lease, no pass sends it again
    seen = commits(db)
    assert not outbox.deliver_due()
    assert receiver.sent == ["m-9"]
    assert status(db, "m-9")[0] == "delivered"  # that pass marked it, in its own read
    assert seen.count("COMMIT") == 1

    with outbox.inline():
        request(store, "m-10")
    assert status(db, "m-10")[0] == "pending"
    n = store.list()[0]
    # A write that fails keeps the mark for the next one.
    with pytest.raises(PreconditionFailed):
        store.transition(n.pid, State.FINALIZED, now_ms=NOW_MS + 2)
    assert status(db, "m-10")[0] == "pending"
    seen.clear()
    store.transition(n.pid, State.TERMINATED, now_ms=NOW_MS + 3)
    assert status(db, "m-10")[0] == "delivered"
    assert seen.count("COMMIT") == 1  # the transition's own commit, and no other
    assert not outbox.deliver_due()
    assert receiver.sent == ["m-9", "m-10"]

    with outbox.inline():
        request(store, "m-11")
    outbox.stop()  # a stop marks what is left
    assert status(db, "m-11")[0] == "delivered"


def test_a_delivery_not_yet_marked_when_the_process_stops_is_sent_again(db: Database) -> None:
    """The mark is not durable before anything: a process that dies before writing it
    sends the message again once its lease ends (receivers drop repeats)."""
    receiver, clock = Receiver(), FixedClock(NOW_MS / 1000)
    outbox = Outbox(db, receiver, clock, settle_later=True)
    store = NegotiationStore(
        db, hand_over=outbox.dispatch, lease_ms=LEASE_MS, settle_in=outbox.settle_in
    )
    with outbox.inline():
        request(store, "m-12")
    assert status(db, "m-12")[0] == "pending"
    # The process "dies": a new outbox on the same database, after the lease.
    again = Outbox(db, receiver, clock)
    clock.advance(LEASE_MS / 1000)
    assert again.deliver_due()
    settled(again, db, "m-12", "delivered")
    again.stop()
    assert receiver.sent == ["m-12", "m-12"]
