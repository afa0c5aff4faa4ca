"""Stream states, windows and metering on SQLite and PostgreSQL: the byte limit holds when
replicas meter messages at the same time, and a window is recorded only from the resume
point it starts at (two subscriptions of one agreement cannot fork the chain)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from connector.errors import NotFound, PreconditionFailed
from connector.sources.windows import Window
from connector.store.database import Database, open_database
from connector.transfer.store import CONSUMER, PROVIDER
from connector.transfer.stream_store import SUSPENDED, TERMINATED, StreamStore

GENESIS = "00" * 32


def _replicas(url: str, n: int) -> list[Database]:
    first = open_database(url)
    return [first] + [open_database(url, migrate=False) for _ in range(n - 1)]


def test_concurrent_messages_from_replicas_never_pass_the_byte_limit(database_url: str) -> None:
    replicas = _replicas(database_url, 4)
    stores = [StreamStore(db) for db in replicas]
    barrier = threading.Barrier(16)

    def meter(n: int) -> int:
        barrier.wait()
        return sum(
            stores[n % 4].meter(
                "ag-1",
                consumer="a",
                product="p",
                max_transfers=0,
                max_bytes=1000,
                size=30,
                now_ms=n,
            )
            for _ in range(5)
        )

    try:
        with ThreadPoolExecutor(16) as pool:
            sent = sum(pool.map(meter, range(16)))
        # 16 x 5 messages of 30 bytes were offered; 1000 bytes hold 33 of them.
        assert sent == 33
        assert stores[0].usage("ag-1") == (33, 990)
    finally:
        for db in replicas:
            db.close()


def window(index: int, first: int, last: int, start: str, head: str) -> Window:
    return Window(index, first, last, last - first + 1, 10 * (last - first + 1), start, head)


def test_a_window_moves_the_resume_point_once(db: Database) -> None:
    store = StreamStore(db)
    with pytest.raises(NotFound):
        store.get("ag-1", PROVIDER)
    state = store.ensure("ag-1", PROVIDER, counterparty="a", product="p", genesis=GENESIS, now_ms=1)
    assert (state.state, state.acked_sequence, state.acked_head) == (SUSPENDED, 0, GENESIS)
    first = window(0, 1, 5, GENESIS, "11" * 32)
    store.acknowledge("ag-1", PROVIDER, first, "receipt-0", 2)
    # The same window again (a replay, or a second subscription): refused, nothing changes.
    with pytest.raises(PreconditionFailed, match="does not follow"):
        store.acknowledge("ag-1", PROVIDER, first, "receipt-0", 3)
    # A window that does not start at the last head: refused.
    with pytest.raises(PreconditionFailed):
        store.acknowledge("ag-1", PROVIDER, window(1, 6, 9, "22" * 32, "33" * 32), "r", 3)
    store.acknowledge("ag-1", PROVIDER, window(1, 6, 9, "11" * 32, "33" * 32), "receipt-1", 4)
    state = store.get("ag-1", PROVIDER)
    assert (state.acked_sequence, state.acked_head, state.next_window) == (9, "33" * 32, 2)
    assert (state.messages, state.bytes) == (9, 90)
    assert [r for _, r in store.windows("ag-1", PROVIDER)] == ["receipt-0", "receipt-1"]
    # The other role's record of the same agreement is its own.
    assert store.windows("ag-1", CONSUMER) == []


def test_a_terminated_stream_stays_terminated(db: Database) -> None:
    store = StreamStore(db)
    store.ensure("ag-1", PROVIDER, counterparty="a", product="p", genesis=GENESIS, now_ms=1)
    store.set_state("ag-1", PROVIDER, TERMINATED, "agreement_revoked", 2)
    store.set_state("ag-1", PROVIDER, SUSPENDED, "the consumer left", 3)
    state = store.get("ag-1", PROVIDER)
    assert (state.state, state.reason) == (TERMINATED, "agreement_revoked")
