"""Negotiation store contract: transitions, idempotency and races, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from connector.errors import Aborted, ConflictError, NotFound, PreconditionFailed
from connector.negotiation.states import State
from connector.negotiation.store import NegotiationStore, Outgoing
from connector.store.database import Database, open_database


@pytest.fixture
def store(database_url: str) -> Iterator[NegotiationStore]:
    db = open_database(database_url)
    yield NegotiationStore(db)
    db.close()


def provider(store: NegotiationStore, consumer_pid: str = "c-1") -> object:
    return store.create(
        role="provider",
        counterparty="a",
        counterparty_pid=consumer_pid,
        product="p",
        offer="o",
        purpose="research",
        state=State.REQUESTED,
        now_ms=1,
    )


def test_create_transition_and_queue(store: NegotiationStore) -> None:
    n = provider(store)
    moved = store.transition(
        n.pid,
        State.AGREED,
        now_ms=2,
        agreement="{}",  # type: ignore[attr-defined]
        agreement_id="ag-1",
        outgoing=[Outgoing("a", "SendAgreement", b"x")],
    )
    assert moved.state == State.AGREED and moved.agreement_id == "ag-1"
    assert store.by_agreement("ag-1").pid == moved.pid
    assert [x.pid for x in store.list(State.AGREED)] == [moved.pid]


def test_repeated_consumer_pid_conflicts(store: NegotiationStore) -> None:
    provider(store, "dup")
    with pytest.raises(ConflictError):
        provider(store, "dup")
    assert store.find("provider", "a", "dup") is not None


def test_invalid_transition_changes_nothing(store: NegotiationStore) -> None:
    n = provider(store)
    with pytest.raises(PreconditionFailed):
        store.transition(
            n.pid,
            State.FINALIZED,
            now_ms=2,  # type: ignore[attr-defined]
            outgoing=[Outgoing("a", "Finalize", b"x")],
        )
    again = store.get(n.pid)  # type: ignore[attr-defined]
    assert again.state == State.REQUESTED and again.updated_ms == 1
    with pytest.raises(NotFound):
        store.get("nope")


def test_racing_transitions_admit_exactly_one(store: NegotiationStore) -> None:
    n = provider(store)
    barrier = threading.Barrier(4)
    results: list[str] = []

    def approve() -> None:
        barrier.wait()
        try:
            store.transition(n.pid, State.AGREED, now_ms=3)  # type: ignore[attr-defined]
            results.append("ok")
        except (PreconditionFailed, Aborted):
            results.append("refused")

    threads = [threading.Thread(target=approve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok", "refused", "refused", "refused"]


def test_inbox_remembers_processed_messages(store: NegotiationStore) -> None:
    n = provider(store)
    store.transition(n.pid, State.TERMINATED, now_ms=2, inbox=("m-1", "a"))  # type: ignore[attr-defined]
    assert store.processed("m-1") and not store.processed("m-2")


def test_database_fixture_is_fresh(database_url: str) -> None:
    db: Database = open_database(database_url)
    try:
        assert NegotiationStore(db).list() == []
    finally:
        db.close()


def test_a_transition_the_log_refuses_is_not_stored(store: NegotiationStore) -> None:
    from connector.errors import Unavailable

    n = provider(store)

    def log_down(tx: object) -> None:
        raise Unavailable("the audit log could not be written")

    with pytest.raises(Unavailable):
        store.transition(
            n.pid,
            State.AGREED,
            now_ms=2,  # type: ignore[attr-defined]
            outgoing=[Outgoing("a", "SendAgreement", b"x")],
            prepare=lambda was: log_down,
        )
    assert store.get(n.pid).state == State.REQUESTED  # type: ignore[attr-defined]
    with pytest.raises(Unavailable):
        store.create(
            role="provider",
            counterparty="a",
            counterparty_pid="c-log",
            product="p",
            offer="o",
            purpose="r",
            state=State.REQUESTED,
            now_ms=1,
            before_commit=log_down,
        )
    assert store.find("provider", "a", "c-log") is None


def test_a_transition_whose_expectation_fails_changes_nothing(store: NegotiationStore) -> None:
    n = provider(store)
    recorded: list[object] = []
    with pytest.raises(PreconditionFailed):
        store.transition(
            n.pid,  # type: ignore[attr-defined]
            State.AGREED,
            now_ms=2,
            outgoing=[Outgoing("a", "SendAgreement", b"x")],
            expect=lambda m: m.counterparty == "someone-else",
            prepare=lambda was: lambda tx: recorded.append(was),
        )
    assert store.get(n.pid).state == State.REQUESTED and recorded == []  # type: ignore[attr-defined]
    moved = store.transition(
        n.pid,  # type: ignore[attr-defined]
        State.AGREED,
        now_ms=2,
        expect=lambda m: m.counterparty == "a",
        prepare=lambda was: lambda tx: recorded.append(was),
    )
    assert moved.state == State.AGREED
    assert [w.state for w in recorded] == [State.REQUESTED]  # type: ignore[attr-defined]


def test_one_read_gives_the_negotiation_and_whether_a_message_was_seen(
    store: NegotiationStore,
) -> None:
    n = provider(store)
    assert store.get_noting(n.pid, "m-1") == (n, False)  # type: ignore[attr-defined]
    store.transition(n.pid, State.AGREED, now_ms=2, inbox=("m-1", "a"))  # type: ignore[attr-defined]
    moved, seen = store.get_noting(n.pid, "m-1")  # type: ignore[attr-defined]
    assert moved.state == State.AGREED and seen
    with pytest.raises(NotFound):
        store.get_noting("no-such-pid", "m-1")


def test_the_requester_is_kept_while_waiting_and_the_terms_of_the_agreement_set(
    store: NegotiationStore,
) -> None:
    requester = {"subject": {"id": "a", "role": "enterprise"}, "certificate_serial": 7}
    n = store.create(
        role="provider",
        counterparty="a",
        counterparty_pid="c-w",
        product="p",
        offer="o",
        purpose="research",
        state=State.REQUESTED,
        now_ms=1,
        requester=requester,
    )
    assert n.requester == requester and store.get(n.pid).requester == requester
    moved = store.transition(
        n.pid, State.AGREED, now_ms=2, agreement="{}", agreement_id="ag-w", terms={"consent": "c1"}
    )
    # Agreed: the approval's decision is taken, the requester is no longer kept.
    assert moved.requester is None and moved.terms == {"consent": "c1"}
    assert store.get(n.pid) == moved


def test_a_message_seen_is_read_with_the_state_its_move_made(
    store: NegotiationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a receiver reads first (``get_noting``) holds together when another replica
    takes the same message between its two statements: a message already processed comes
    with the state its move committed, never the state before (which a repeat would
    answer with: AGREED to a countersignature that FINALIZED it)."""
    from connector.store.database import RawTransaction

    n = store.transition(provider(store).pid, State.AGREED, now_ms=2)  # type: ignore[attr-defined]
    original = RawTransaction.one
    calls: list[str] = []

    def one(self: RawTransaction, sql: str, params: object = ()) -> object:
        found = original(self, sql, params)  # type: ignore[arg-type]
        if threading.current_thread() is not reader:
            return found  # the mover's own reads
        calls.append(sql)
        if len(calls) == 1:  # the other replica's move lands between the two reads
            mover = threading.Thread(
                target=lambda: store.transition(
                    n.pid, State.VERIFIED, State.FINALIZED, now_ms=3, inbox=("m-verify", "a")
                )
            )
            mover.start()
            mover.join(2)  # SQLite may hold it until this read ends: its snapshot holds
            moving.append(mover)
        return found

    moving: list[threading.Thread] = []
    reader = threading.current_thread()
    monkeypatch.setattr(RawTransaction, "one", one)
    read, seen = store.get_noting(n.pid, "m-verify")
    monkeypatch.setattr(RawTransaction, "one", original)
    for mover in moving:
        mover.join(10)
    assert len(calls) == 2
    if seen:
        assert read.state == State.FINALIZED
    assert store.get(n.pid).state == State.FINALIZED
