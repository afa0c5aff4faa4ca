"""Countersignatures owed to providers go through the outbox: written in the same commit as
the consumer's computation, retried while the provider cannot be reached, not retried once
it refused them for good (until a restart), sent after a restart when the process died
before sending, and sent once by replicas sharing a PostgreSQL database.

The connector's real store, audit log and outbox on SQLite and PostgreSQL; the provider is
a function standing in for its ``ConfirmComputation`` (the gRPC path is the integration
tests' ``test_an_answer_comes_with_a_receipt_both_sign_and_log``)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import compute_pb2
from connector.audit.log import TransparencyLog
from connector.clock import SystemClock
from connector.compute.client import CONFIRM_METHOD, ComputeConsumer, confirmation_id
from connector.compute.store import ANSWERED, CONFIRMED, CONSUMER, Computation, ComputationStore
from connector.errors import PreconditionFailed, Unavailable
from connector.negotiation.outbox import Outbox
from connector.store.database import Database, open_database

CLOCK = SystemClock()


class Provider:
    """Answers ``Unavailable`` ``down`` times, then takes confirmations (or refuses them
    all for good with ``refuse``); counts every call, thread-safely."""

    def __init__(self, down: int = 0, refuse: bool = False, delay: float = 0.0) -> None:
        self.down, self.refuse, self.delay = down, refuse, delay
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def send(self, target: str, request: compute_pb2.ConfirmComputationRequest) -> None:
        assert target == "health"
        assert request.receipt == f"receipt of {request.computation_id}"
        with self._lock:
            self.calls.append(request.computation_id)
            n = len(self.calls)
        time.sleep(self.delay)  # a call takes time: room for a replica to race it
        if self.refuse:
            raise PreconditionFailed(f"computation {request.computation_id} is not yours")
        if n <= self.down:
            raise Unavailable("the provider cannot be reached")


def answered(n: int) -> Computation:
    now_ms = int(CLOCK.now() * 1000)
    return Computation(
        id=f"cp-{n:032x}",
        role=CONSUMER,
        agreement_id="ag-1",
        product="admissions",
        counterparty="health",
        state=ANSWERED,
        started_ms=now_ms,
        receipt=f"receipt of cp-{n:032x}",
        ended_ms=now_ms,
    )


class Connector:
    """The consumer's side of one process: its store, log, compute consumer and outbox."""

    def __init__(
        self,
        db: Database,
        provider: Provider,
        *,
        hand_over: bool = True,
        lease_ms: int = 30_000,
        max_attempts: int = 12,
    ) -> None:
        self.db = db
        self.store = ComputationStore(db)
        self.log = TransparencyLog(
            db,
            origin="tds/city/lab",
            actor="lab",
            signing_key=ed25519.Ed25519PrivateKey.generate(),
            clock=CLOCK,
        )
        self.consumer = ComputeConsumer(
            participant="lab",
            agreement_of=lambda _: None,  # type: ignore[arg-type,return-value]  # not asked
            store=self.store,
            audit=self.log,
            clock=CLOCK,
            signing_key=ed25519.Ed25519PrivateKey.generate(),
            keys=lambda _: None,  # type: ignore[arg-type,return-value]
            channel_to=lambda _: None,  # type: ignore[arg-type,return-value]
            hand_over=self.dispatch if hand_over else None,
            lease_ms=lease_ms,
            send=provider.send,
        )
        self.outbox = Outbox(
            db,
            self.consumer.deliver,
            CLOCK,
            base_delay=0.01,
            max_delay=0.05,
            max_attempts=max_attempts,
            poll_seconds=0.01,
            on_give_up=self.consumer.gave_up,
        )

    def dispatch(self, messages: Any) -> None:
        self.outbox.dispatch(messages)

    def answer(self, c: Computation) -> None:
        """What ``ask`` does once the answer is checked: record, then hand over."""
        queued = self.consumer.record_answered(c)
        if self.consumer._hand_over is not None:
            self.consumer._hand_over(queued)

    def stop(self) -> None:
        self.outbox.stop()
        self.consumer.stop()


def row(db: Database, computation: str) -> tuple[str, int, str]:
    """The confirmation's outbox row: status, attempts, method."""
    with db.transaction() as tx:
        found = tx.all(
            "SELECT status, attempts, method FROM outbox WHERE message_id = ?",
            (confirmation_id(computation),),
        )
    assert len(found) == 1, found  # one row per computation, however often it is owed
    return found[0][0], int(found[0][1]), found[0][2]


def wait_for(check: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def connector(url: str, provider: Provider, **options: Any) -> Iterator[Connector]:
    db = open_database(url)
    c = Connector(db, provider, **options)
    try:
        yield c
    finally:
        c.stop()
        db.close()


def test_the_confirmation_is_in_the_computations_commit_and_is_sent_once_the_provider_is_back(
    database_url: str,
) -> None:
    provider = Provider(down=3)
    with connector(database_url, provider) as lab:
        lab.outbox.start()
        c = answered(1)
        lab.answer(c)
        assert wait_for(lambda: lab.store.get(c.id).state == CONFIRMED)
        assert provider.calls == [c.id] * 4
        # Marked delivered in the commit that marked the computation confirmed.
        assert row(lab.db, c.id) == ("delivered", 3, CONFIRM_METHOD)
        assert lab.store.get(c.id).reason == ""
        logged = [json.loads(body) for _, body in lab.log.entries(0, lab.log.size)]
        assert [(e["kind"], e["data"]["computation"]) for e in logged] == [
            ("compute.receipt", c.id)
        ]


def test_a_refusal_for_good_is_not_retried_until_a_restart(database_url: str) -> None:
    provider = Provider(refuse=True)
    with connector(database_url, provider) as lab:
        lab.outbox.start()
        c = answered(1)
        lab.answer(c)
        assert wait_for(lambda: row(lab.db, c.id)[0] == "failed")
        time.sleep(0.2)  # time for retries, were there any
        assert provider.calls == [c.id]
        stored = lab.store.get(c.id)
        assert stored.state == ANSWERED
        assert stored.reason.startswith("not yet confirmed: computation")
    provider.refuse = False  # the provider's administrator fixed what made it refuse
    with connector(database_url, provider) as restarted:
        assert restarted.consumer.resume() == 1
        restarted.outbox.start()
        assert wait_for(lambda: restarted.store.get(c.id).state == CONFIRMED)
        assert provider.calls == [c.id] * 2


def test_retries_stop_after_max_attempts_and_resume_at_the_next_start(database_url: str) -> None:
    provider = Provider(down=100)
    with connector(database_url, provider, max_attempts=4) as lab:
        lab.outbox.start()
        c = answered(1)
        lab.answer(c)
        assert wait_for(lambda: row(lab.db, c.id)[0] == "failed")
        time.sleep(0.1)
        assert provider.calls == [c.id] * 4
        assert lab.store.get(c.id).state == ANSWERED  # owed still
    provider.down = 0
    with connector(database_url, provider) as restarted:
        restarted.consumer.resume()
        restarted.outbox.start()
        assert wait_for(lambda: restarted.store.get(c.id).state == CONFIRMED)
        assert provider.calls == [c.id] * 5


def test_a_confirmation_owed_when_the_process_died_is_sent_after_its_restart(
    database_url: str,
) -> None:
    provider = Provider()
    lease_ms = 1500
    with connector(database_url, provider, lease_ms=lease_ms) as lab:
        c = answered(1)
        lab.consumer.record_answered(c)  # committed; the process dies before handing it over
        recorded = time.monotonic()
    assert provider.calls == []
    with connector(database_url, provider) as restarted:
        assert restarted.consumer.resume() == 1
        restarted.outbox.start()
        assert wait_for(lambda: restarted.store.get(c.id).state == CONFIRMED)
        waited = time.monotonic() - recorded
        assert provider.calls == [c.id]
        assert row(restarted.db, c.id)[0] == "delivered"
    if restarted.db.postgres:
        # The lease may be a live replica's: it is left to run out.
        assert waited >= lease_ms / 1000 - 0.1
    else:
        # One process owns a SQLite database: its own lease from before the restart ends.
        assert waited < lease_ms / 1000


def test_computations_recorded_before_the_outbox_carried_confirmations_are_owed_at_start(
    database_url: str,
) -> None:
    provider = Provider()
    db = open_database(database_url)
    try:
        ComputationStore(db).create(answered(7))  # no outbox row: as an older version left it
    finally:
        db.close()
    with connector(database_url, provider) as lab:
        assert lab.consumer.resume() == 1
        lab.outbox.start()
        assert wait_for(lambda: lab.store.get(answered(7).id).state == CONFIRMED)
        assert provider.calls == [answered(7).id]


@pytest.mark.postgres
def test_replicas_sharing_postgresql_send_each_confirmation_once(postgres_url: str) -> None:
    provider = Provider(delay=0.005)
    first = open_database(postgres_url)
    second = open_database(postgres_url, migrate=False)
    replicas = [Connector(first, provider), Connector(second, provider)]
    try:
        # Owed, with no process holding them (recorded by a replica that then died,
        # its lease run out): both replicas start, and both resume.
        owed = [answered(n) for n in range(30)]
        recorder = Connector(first, provider, hand_over=False)
        for c in owed:
            recorder.consumer.record_answered(c)
        barrier = threading.Barrier(2)

        def start(replica: Connector) -> None:
            barrier.wait()
            replica.consumer.resume()
            replica.outbox.start()

        threads = [threading.Thread(target=start, args=(r,)) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store = ComputationStore(first)
        assert wait_for(lambda: all(store.get(c.id).state == CONFIRMED for c in owed), 30)
        time.sleep(0.2)  # a repeat, were there one, would land now
        sent = Counter(provider.calls)
        assert sent == Counter({c.id: 1 for c in owed}), sent
        assert {row(first, c.id)[0] for c in owed} == {"delivered"}
    finally:
        for r in replicas:
            r.stop()
        first.close()
        second.close()
