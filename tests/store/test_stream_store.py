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
from connector.transfer.stream_store import (
    SUSPENDED,
    TERMINATED,
    StreamLimits,
    StreamStore,
    StreamUsage,
)

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
                limits=StreamLimits(max_bytes=1000),
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


def _race(stores: list[StreamStore], limits: StreamLimits, now_ms: int, size: int = 10) -> int:
    """16 threads over the replicas each meter 5 messages of ``size`` bytes (blocks of 3
    messages where they fit, else one, as a subscription does) at the same moment; how
    many messages were counted."""
    barrier = threading.Barrier(16)

    def meter(n: int) -> int:
        barrier.wait()
        counted = 0
        for _ in range(5):
            for block in (3, 1):
                if stores[n % len(stores)].meter(
                    "ag-1",
                    consumer="a",
                    product="p",
                    max_transfers=0,
                    limits=limits,
                    size=block * size,
                    messages=block,
                    now_ms=now_ms,
                ):
                    counted += block
                    break
        return counted

    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(meter, range(16)))


def test_concurrent_replicas_never_pass_the_message_limit(database_url: str) -> None:
    replicas = _replicas(database_url, 4)
    stores = [StreamStore(db) for db in replicas]
    try:
        # Up to 16 x 5 blocks of 3 were asked for; the agreement allows 100 messages.
        assert _race(stores, StreamLimits(max_messages=100), now_ms=1) == 100
        assert stores[0].usage("ag-1") == (100, 1000)
        assert not stores[1].meter(
            "ag-1",
            consumer="a",
            product="p",
            max_transfers=0,
            limits=StreamLimits(max_messages=100),
            size=1,
            now_ms=2,
        )
    finally:
        for db in replicas:
            db.close()


HOUR_MS = 3_600_000


def test_concurrent_replicas_never_pass_a_period_limit_and_the_next_period_starts_afresh(
    database_url: str,
) -> None:
    replicas = _replicas(database_url, 4)
    stores = [StreamStore(db) for db in replicas]
    limits = StreamLimits(period_seconds=3600, period_max_messages=40, period_max_bytes=10_000)
    start = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS
    try:
        assert _race(stores, limits, now_ms=start + 5) == 40
        assert stores[0].stream_usage("ag-1", limits, start + 10) == StreamUsage(40, 400, 40, 400)
        # The next hour counts from zero; the agreement's totals go on.
        assert _race(stores, limits, now_ms=start + HOUR_MS) == 40
        assert stores[2].stream_usage("ag-1", limits, start + HOUR_MS) == StreamUsage(
            80, 800, 40, 400
        )
        # A replica whose clock is behind (still the hour before) counts in the later hour
        # rather than restarting the earlier one: the limit holds.
        assert not stores[3].meter(
            "ag-1",
            consumer="a",
            product="p",
            max_transfers=0,
            limits=limits,
            size=1,
            now_ms=start + HOUR_MS - 1,
        )
        # The period's bytes are a limit of their own.
        bytes_only = StreamLimits(period_seconds=3600, period_max_bytes=450)
        assert stores[0].meter(
            "ag-1",
            consumer="a",
            product="p",
            max_transfers=0,
            limits=bytes_only,
            size=50,
            now_ms=start + HOUR_MS,
        )
        assert not stores[0].meter(
            "ag-1",
            consumer="a",
            product="p",
            max_transfers=0,
            limits=bytes_only,
            size=1,
            now_ms=start + HOUR_MS,
        )
        usage = stores[0].stream_usage("ag-1", bytes_only, start + HOUR_MS)
        assert usage.refusal(bytes_only, 1, 1) == "period_byte_limit_reached"
    finally:
        for db in replicas:
            db.close()


def test_a_refund_comes_off_its_own_period_only(db: Database) -> None:
    store = StreamStore(db)
    limits = StreamLimits(period_seconds=3600, period_max_messages=1000)
    start = 7 * HOUR_MS

    def meter(n: int, now_ms: int) -> None:
        assert store.meter(
            "ag-1",
            consumer="a",
            product="p",
            max_transfers=0,
            limits=limits,
            size=n,
            messages=n,
            now_ms=now_ms,
        )

    meter(10, start)
    store.refund("ag-1", 4, 4, start + 1, period_start_ms=start)
    assert store.stream_usage("ag-1", limits, start) == StreamUsage(6, 6, 6, 6)
    meter(3, start + HOUR_MS)
    # A block counted in the earlier hour and given back in the later one leaves the later
    # hour's count alone.
    store.refund("ag-1", 2, 2, start + HOUR_MS, period_start_ms=start)
    assert store.stream_usage("ag-1", limits, start + HOUR_MS) == StreamUsage(7, 7, 3, 3)


def test_usage_names_the_limit_a_message_would_pass() -> None:
    limits = StreamLimits(max_bytes=100, max_messages=10, period_max_messages=5)
    assert StreamUsage(3, 50, 3, 50).refusal(limits, 1, 10) is None
    assert StreamUsage(10, 50, 3, 50).refusal(limits, 1, 10) == "message_limit_reached"
    assert StreamUsage(3, 95, 3, 95).refusal(limits, 1, 10) == "byte_limit_reached"
    assert StreamUsage(5, 50, 5, 50).refusal(limits, 1, 10) == "period_message_limit_reached"
    assert StreamUsage(9, 90, 4, 40).less(2, 20) == StreamUsage(7, 70, 2, 20)


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


def test_the_windows_after_one_are_found_only_from_where_a_window_ended(db: Database) -> None:
    store = StreamStore(db)
    store.ensure("ag-1", PROVIDER, counterparty="a", product="p", genesis=GENESIS, now_ms=1)
    heads = [GENESIS, "11" * 32, "22" * 32, "33" * 32]
    for i, (first, last) in enumerate(((1, 5), (6, 9), (12, 20))):  # 10, 11 were skipped
        store.acknowledge(
            "ag-1", PROVIDER, window(i, first, last, heads[i], heads[i + 1]), f"r{i}", 2
        )

    def after(sequence: int, limit: int = 5) -> list[str] | None:
        found = store.windows_after("ag-1", PROVIDER, sequence, limit)
        return None if found is None else [r for _, r in found]

    assert after(0) == ["r0", "r1", "r2"]
    assert after(5) == ["r1", "r2"]
    assert after(9) == ["r2"]
    assert after(20) == []
    assert after(0, limit=2) == ["r0", "r1"]
    assert after(5, limit=1) == ["r1"]
    for inside in (3, 7, 10, 11, 15, 21):  # no window ends there
        assert after(inside) is None
    assert store.windows_after("ag-1", CONSUMER, 0, 5) == []
    assert store.windows_after("ag-2", PROVIDER, 5, 5) is None


def test_a_terminated_stream_stays_terminated(db: Database) -> None:
    store = StreamStore(db)
    store.ensure("ag-1", PROVIDER, counterparty="a", product="p", genesis=GENESIS, now_ms=1)
    store.set_state("ag-1", PROVIDER, TERMINATED, "agreement_revoked", 2)
    store.set_state("ag-1", PROVIDER, SUSPENDED, "the consumer left", 3)
    state = store.get("ag-1", PROVIDER)
    assert (state.state, state.reason) == (TERMINATED, "agreement_revoked")


def test_a_suspension_racing_a_termination_does_not_undo_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The provider's subscription ends (SUSPENDED) while the consumer's stop terminates
    # the stream, on another thread or replica: the termination commits between the
    # suspension's look at the row and its write. It must stay TERMINATED.
    first, other = _replicas(database_url, 2)
    suspending, terminating = StreamStore(first), StreamStore(other)
    suspending.ensure("ag-1", PROVIDER, counterparty="a", product="p", genesis=GENESIS, now_ms=1)
    suspending.set_state("ag-1", PROVIDER, "STARTED", "", 2)
    looked = threading.Event()
    raced: list[BaseException] = []

    def terminate() -> None:
        looked.wait(10)
        try:
            terminating.set_state("ag-1", PROVIDER, TERMINATED, "the flood is over", 3)
        except BaseException as exc:
            raced.append(exc)

    from sqlalchemy import event

    def let_it_commit() -> None:
        if not looked.is_set():
            looked.set()
            racer.join(5)  # the termination commits now, if the store lets it

    # After the suspension's first look at the row, or before its first write, whichever
    # it makes first.
    @event.listens_for(first.engine, "after_cursor_execute")
    def _after(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            let_it_commit()

    @event.listens_for(first.engine, "before_cursor_execute")
    def _before(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            let_it_commit()

    racer = threading.Thread(target=terminate)
    racer.start()
    try:
        suspending.set_state("ag-1", PROVIDER, SUSPENDED, "the consumer left", 4)
        racer.join(10)
        assert looked.is_set() and not raced
        state = terminating.get("ag-1", PROVIDER)
        assert (state.state, state.reason) == (TERMINATED, "the flood is over")
    finally:
        event.remove(first.engine, "after_cursor_execute", _after)
        event.remove(first.engine, "before_cursor_execute", _before)
        racer.join(10)
        first.close()
        other.close()
