"""ε metering on SQLite and PostgreSQL: the budget holds when replicas (each with its own
connection pool to the same database) answer questions at the same time, and a failed
computation gives its ε back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from connector.compute.store import (
    FAILED,
    PROVIDER,
    RESERVED,
    Computation,
    ComputationStore,
    micro,
)
from connector.errors import PermissionDenied
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


def test_concurrent_questions_from_replicas_never_overspend(database_url: str) -> None:
    replicas = _replicas(database_url, 4)
    stores = [ComputationStore(db) for db in replicas]
    barrier = threading.Barrier(12)

    def ask(n: int) -> bool:
        barrier.wait()
        try:
            # ε 0.3 each against a budget of 1.0: three fit (0.9), a fourth would be 1.2.
            stores[n % 4].reserve(computation(n), budget_micro=micro(1.0), now_ms=n)
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
