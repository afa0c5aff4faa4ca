"""Transfer records and metering on SQLite and PostgreSQL: limits hold when replicas (each
with its own connection pool to the same database) start transfers at the same time."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.log import TransparencyLog
from connector.clock import FixedClock
from connector.errors import ConflictError, PermissionDenied, PreconditionFailed
from connector.negotiation.states import State
from connector.negotiation.store import NegotiationStore
from connector.store.database import Database, open_database
from connector.transfer.store import (
    COMPLETED,
    CONSUMER,
    FAILED,
    PROVIDER,
    STARTED,
    STARTING,
    Transfer,
    TransferStore,
)


def transfer(n: int, size: int = 100, agreement: str = "ag-1") -> Transfer:
    return Transfer(
        id=f"tr-{n}",
        role=PROVIDER,
        agreement_id=agreement,
        product="p",
        counterparty="a",
        state=STARTING,
        size=size,
        sha256="0" * 64,
        chunk_size=1024,
        started_ms=n,
    )


def _replicas(url: str, n: int) -> list[Database]:
    first = open_database(url)
    return [first] + [open_database(url, migrate=False) for _ in range(n - 1)]


@pytest.mark.parametrize(("max_transfers", "max_bytes", "allowed"), [(3, 0, 3), (0, 450, 4)])
def test_concurrent_starts_from_replicas_never_exceed_a_limit(
    database_url: str, max_transfers: int, max_bytes: int, allowed: int
) -> None:
    replicas = _replicas(database_url, 4)
    stores = [TransferStore(db) for db in replicas]
    barrier = threading.Barrier(12)

    def start(n: int) -> bool:
        barrier.wait()
        try:
            stores[n % 4].reserve(
                transfer(n), max_transfers=max_transfers, max_bytes=max_bytes, now_ms=n
            )
        except PermissionDenied as exc:
            assert ("transfer_limit" if max_transfers else "byte_limit") in str(exc)
            return False
        return True

    try:
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(start, range(12)))
        assert sum(results) == allowed
        assert stores[0].usage("ag-1") == (allowed, allowed * 100)
        assert len(stores[0].list(PROVIDER)) == allowed
    finally:
        for db in replicas:
            db.close()


def test_release_and_completion_keep_counts_consistent(database_url: str) -> None:
    db = open_database(database_url)
    try:
        store = TransferStore(db)
        store.reserve(transfer(1), max_transfers=0, max_bytes=0, now_ms=1)
        store.reserve(transfer(2), max_transfers=0, max_bytes=0, now_ms=2)
        store.release("tr-1", "not logged", 3)  # its log entry failed: uncounted
        assert store.usage("ag-1") == (1, 100)
        assert store.get("tr-1").state == "failed"
        store.update("tr-2", expect=frozenset({STARTING}), state=STARTED)
        store.update("tr-2", expect=frozenset({STARTED}), state=COMPLETED)
        with pytest.raises(PreconditionFailed):  # completing twice changes nothing
            store.update("tr-2", expect=frozenset({STARTED}), state=COMPLETED)
        (m,) = store.metering()
        assert (m.transfers, m.bytes, m.completed, m.completed_bytes) == (1, 100, 1, 100)
    finally:
        db.close()


def test_a_transfer_and_its_log_entries_commit_together_or_not_at_all(database_url: str) -> None:
    """Issue 18, finding 8: a refused record (a duplicate id, a state already moved on)
    leaves no entry in the log, and an entry's index is stored with the change it logs."""
    db = open_database(database_url)
    log = TransparencyLog(
        db,
        origin="tds/city/a",
        actor="a",
        signing_key=ed25519.Ed25519PrivateKey.generate(),
        clock=FixedClock(1_800_000_000),
    )
    store = TransferStore(db)
    try:
        t = replace(transfer(1), role=CONSUMER, state=STARTED)
        store.create(t, log=log.prepare([("transfer.started", ["b"], {"transfer": t.id})]))
        assert log.size == 1
        with pytest.raises(ConflictError, match="already recorded"):
            store.create(t, log=log.prepare([("transfer.started", ["b"], {"transfer": t.id})]))
        assert log.size == 1
        moved = store.update(
            t.id,
            expect=frozenset({STARTED}),
            received=100,
            log=log.prepare([("transfer.received", ["b"], {"transfer": t.id})]),
            log_index="consumer_log_index",
        )
        assert (moved.consumer_log_index, moved.received, log.size) == (1, 100, 2)
        assert store.get(t.id).consumer_log_index == 1
        store.update(t.id, expect=frozenset({STARTED}), state=COMPLETED)
        with pytest.raises(PreconditionFailed):
            store.update(
                t.id,
                expect=frozenset({STARTED}),
                state=FAILED,
                log=log.prepare([("transfer.failed", ["b"], {"transfer": t.id})]),
            )
        assert log.size == 2 and store.get(t.id).state == COMPLETED
    finally:
        log.close()
        db.close()


def test_kept_holdings_name_each_holding_once_with_its_agreements_state(
    database_url: str,
) -> None:
    """What the holdings sweep decides on: the consumer's completed, not deleted transfers,
    newest first, each once, with whether its agreement is known here and its revocation
    (from either of two negotiations of the same agreement)."""
    db = open_database(database_url)
    try:
        store, negotiations = TransferStore(db), NegotiationStore(db)

        def negotiation(agreement: str, role: str) -> str:
            return negotiations.create(
                role=role, counterparty="p", counterparty_pid=f"{agreement}-{role}",
                product="x", offer="o", purpose="r", state=State.FINALIZED, now_ms=1,
                agreement="signed", agreement_id=agreement,
            ).pid  # fmt: skip

        negotiation("ag-kept", "consumer")
        negotiation("ag-revoked", "consumer")
        revoked_pid = negotiation("ag-revoked", "provider")  # one agreement, both sides here
        negotiations.set_revocation(revoked_pid, "revoked-jws", now_ms=2)

        def held(n: int, agreement: str, **changes: object) -> None:
            t = replace(
                transfer(n, agreement=agreement), role=CONSUMER, state=COMPLETED,
                obligations={"delete_after_ns": n},
            )  # fmt: skip
            store.create(replace(t, **changes))  # type: ignore[arg-type]

        held(1, "ag-kept")
        held(2, "ag-revoked")
        held(3, "ag-unknown")
        held(4, "ag-kept", state=FAILED)  # not a holding
        held(5, "ag-kept", deleted_ms=9)  # deleted already
        held(6, "ag-kept", role=PROVIDER)  # the provider's side
        assert store.kept_holdings() == [
            ("tr-3", "ag-unknown", '{"delete_after_ns": 3}', False, None),
            ("tr-2", "ag-revoked", '{"delete_after_ns": 2}', True, "revoked-jws"),
            ("tr-1", "ag-kept", '{"delete_after_ns": 1}', True, None),
        ]
        assert [h[0] for h in store.kept_holdings("ag-revoked")] == ["tr-2"]
    finally:
        db.close()
