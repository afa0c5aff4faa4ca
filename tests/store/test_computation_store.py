"""ε metering on SQLite and PostgreSQL: the budget holds when replicas (each with its own
connection pool to the same database) answer questions at the same time, and a failed
computation gives its ε back."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.log import TransparencyLog
from connector.clock import FixedClock
from connector.compute.store import (
    ANSWERED,
    FAILED,
    PROVIDER,
    RESERVED,
    Computation,
    ComputationStore,
    micro,
)
from connector.errors import NotFound, PermissionDenied, PreconditionFailed
from connector.store.database import Database, open_database
from connector.transfer.store import STARTING, Transfer, TransferStore


def computation(n: int, epsilon: float = 0.3, agreement: str = "ag-1") -> Computation:
    return Computation(
        id=f"cp-{n}",
        role=PROVIDER,
        agreement_id=agreement,
        product="p",
        counterparty="a",
        state=RESERVED,
        started_ms=n,
        epsilon_micro=micro(epsilon),
    )


def _replicas(url: str, n: int) -> list[Database]:
    first = open_database(url)
    return [first] + [open_database(url, migrate=False) for _ in range(n - 1)]


@pytest.mark.parametrize("durable", [True, False], ids=["synced", "sync-later"])
def test_concurrent_questions_from_replicas_never_overspend(
    database_url: str, durable: bool
) -> None:
    # Unsynced reservations (the provider's, before it computes) are no less atomic.
    replicas = _replicas(database_url, 4)
    stores = [ComputationStore(db) for db in replicas]
    barrier = threading.Barrier(12)

    def ask(n: int) -> bool:
        barrier.wait()
        try:
            # ε 0.3 each against a budget of 1.0: three fit (0.9), a fourth would be 1.2.
            stores[n % 4].reserve(
                computation(n), budget_micro=micro(1.0), now_ms=n, durable=durable
            )
        except PermissionDenied as exc:
            assert "privacy_budget_exhausted" in str(exc)
            assert "0.9 spent, 0.1 left" in str(exc)
            return False
        return True

    try:
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(ask, range(12)))
        assert sum(results) == 3
        used = stores[0].usage("ag-1")
        assert (used.computations, used.spent_micro) == (3, 900_000)
        assert used.left == pytest.approx(0.1)
        assert len(stores[0].list(PROVIDER)) == 3
    finally:
        for db in replicas:
            db.close()


def test_exactly_the_budget_can_be_spent_and_no_more(database_url: str) -> None:
    db = open_database(database_url)
    try:
        store = ComputationStore(db)
        # 0.1 ten times is 1.0 exactly in millionths (floats would make it 0.999…9 or 1.0…2).
        for n in range(10):
            store.reserve(computation(n, 0.1), budget_micro=micro(1.0), now_ms=n)
        with pytest.raises(PermissionDenied, match="privacy_budget_exhausted"):
            store.reserve(computation(10, 0.1), budget_micro=micro(1.0), now_ms=10)
        assert store.usage("ag-1").spent_micro == 1_000_000
    finally:
        db.close()


def test_a_failed_computation_gives_its_epsilon_back(database_url: str) -> None:
    db = open_database(database_url)
    try:
        store = ComputationStore(db)
        store.reserve(computation(1, 0.5), budget_micro=micro(1.0), now_ms=1)
        store.release("cp-1", "source down", now_ms=2)
        store.release("cp-1", "again", now_ms=3)  # once only
        used = store.usage("ag-1")
        assert (used.computations, used.spent_micro) == (0, 0)
        assert store.get("cp-1").state == FAILED
    finally:
        db.close()


def test_transfers_and_computations_share_the_metering_row(database_url: str) -> None:
    db = open_database(database_url)
    try:
        TransferStore(db).reserve(
            Transfer(
                id="tr-1",
                role=PROVIDER,
                agreement_id="ag-1",
                product="p",
                counterparty="a",
                state=STARTING,
                size=10,
                sha256="0" * 64,
                chunk_size=1024,
                started_ms=1,
            ),
            max_transfers=0,
            max_bytes=0,
            now_ms=1,
        )
        store = ComputationStore(db)
        store.reserve(computation(1, 0.0), budget_micro=0, now_ms=2)
        assert TransferStore(db).usage("ag-1") == (1, 10)
        assert store.usage("ag-1").computations == 1
    finally:
        db.close()


def test_a_reservation_not_yet_synced_outlives_the_process_and_stays_spent(
    database_url: str,
) -> None:
    """The provider dies after reserving ε (committed, not synced) and before answering:
    the computation stays ``reserved`` and its ε spent. It is not given back on restart:
    on a shared database another replica may still be computing it, and a budget spent
    once too often in a crash is the safe side (no answer left, so nothing was learnt)."""
    open_database(database_url).close()  # migrated
    script = textwrap.dedent(
        f"""
        import os
        from connector.compute.store import PROVIDER, RESERVED, Computation, ComputationStore
        from connector.store.database import open_database
        db = open_database({database_url!r}, migrate=False)
        c = Computation(id="cp-1", role=PROVIDER, agreement_id="ag-1", product="p",
                        counterparty="a", state=RESERVED, started_ms=1, epsilon_micro=400_000)
        ComputationStore(db).reserve(c, budget_micro=1_000_000, now_ms=1, durable=False)
        os._exit(0)  # dies: no close, no sync, nothing else
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    db = open_database(database_url)
    try:
        store = ComputationStore(db)
        assert store.get("cp-1").state == RESERVED
        used = store.usage("ag-1")
        assert (used.computations, used.spent_micro) == (1, 400_000)
        with pytest.raises(PermissionDenied, match=r"0\.4 spent, 0\.6 left"):
            store.reserve(computation(2, 0.7), budget_micro=micro(1.0), now_ms=2)
    finally:
        db.close()


def test_a_state_change_and_its_log_entry_commit_together_or_not_at_all(
    database_url: str,
) -> None:
    db = open_database(database_url)
    log = TransparencyLog(
        db,
        origin="tds/city/p",
        actor="p",
        signing_key=ed25519.Ed25519PrivateKey.generate(),
        clock=FixedClock(1_800_000_000),
    )
    try:
        store = ComputationStore(db)
        store.reserve(computation(1), budget_micro=0, now_ms=1)
        before = log.size
        entry = ("compute.answered", ["a"], {"computation": "cp-1"})
        store.update("cp-1", expect=RESERVED, log=log.prepare([entry]), state=ANSWERED)
        assert (store.get("cp-1").state, log.size) == (ANSWERED, before + 1)
        # A compare-and-set that fails appends nothing.
        with pytest.raises(PreconditionFailed, match="is answered"):
            store.update("cp-1", expect=RESERVED, log=log.prepare([entry]), state=ANSWERED)
        assert log.size == before + 1
    finally:
        log.close()
        db.close()


def test_a_computation_reads_back_as_recorded(database_url: str) -> None:
    """``get`` (a plain read of every column) returns what ``create`` recorded, field by
    field, on both databases; an unknown id is NotFound."""
    db = open_database(database_url)
    try:
        store = ComputationStore(db)
        recorded = Computation(
            id="cp-" + "ab" * 16,
            role="consumer",
            agreement_id="ag-7",
            product="admissions",
            counterparty="gov",
            state=ANSWERED,
            started_ms=1_700_000_000_123,
            query_sha256="q" * 64,
            answer_sha256="a" * 64,
            epsilon_micro=333_333,
            receipt='{"payload": "x"}',
            reason="",
            ended_ms=1_700_000_000_456,
        )
        store.create(recorded)
        assert store.get(recorded.id) == recorded
        store.create(computation(9))  # the defaults: no receipt, no hashes
        assert store.get("cp-9") == computation(9)
        with pytest.raises(NotFound):
            store.get("cp-missing")
    finally:
        db.close()
