"""The admin lists' pages at the store: newest first by (time, id), each row once, filters
applied in the database, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connector.negotiation.states import State
from connector.negotiation.store import NegotiationStore, page_position
from connector.store.database import open_database


@pytest.fixture
def store(database_url: str) -> Iterator[NegotiationStore]:
    db = open_database(database_url)
    yield NegotiationStore(db)
    db.close()


def test_negotiation_pages_walk_newest_first_and_filter(store: NegotiationStore) -> None:
    made = []
    for i in range(23):
        made.append(
            store.create(
                role="provider" if i % 3 else "consumer",
                counterparty="a",
                counterparty_pid=f"c-{i}",
                product="p",
                offer="o",
                purpose="research",
                state=State.REQUESTED if i % 2 else State.FINALIZED,
                agreement_id=None if i % 2 else f"ag-{i}",
                now_ms=1000 + i // 4,  # four share each time: the pid breaks the tie
            )
        )
    newest_first = sorted(made, key=lambda n: (n.created_ms, n.pid), reverse=True)

    def walk(**filters: object) -> list[str]:
        shown: list[str] = []
        after: tuple[str, ...] = ()
        while True:
            page = store.page_before(after, 5, **filters)  # type: ignore[arg-type]
            shown += [n.pid for n in page]
            if len(page) < 5:
                return shown
            after = page_position(page[-1])

    assert walk() == [n.pid for n in newest_first]
    assert walk(agreements=True) == [n.pid for n in newest_first if n.agreement_id]
    waiting = walk(state=State.REQUESTED, role="provider")
    assert waiting == [
        n.pid for n in newest_first if n.state == State.REQUESTED and n.role == "provider"
    ]
    assert waiting  # the filter leaves some, and drops others
    assert len(waiting) < len(made)


def test_transfer_pages_walk_newest_first_and_filter(database_url: str) -> None:
    from dataclasses import replace

    from connector.transfer.store import COMPLETED, CONSUMER, PROVIDER, TransferStore
    from tests.store.test_transfer_store import transfer

    db = open_database(database_url)
    try:
        store = TransferStore(db)
        for n in range(17):
            t = transfer(n)
            role = CONSUMER if n % 2 else PROVIDER
            store.create(replace(t, role=role, state=COMPLETED, started_ms=100 + n // 3))

        def walk(role: str = "", holdings: bool = False) -> list[str]:
            shown: list[str] = []
            after: tuple[str, ...] = ()
            while True:
                page = store.list(role, holdings, before=after, limit=4)
                shown += [t.id for t in page]
                if len(page) < 4:
                    return shown
                after = (str(page[-1].started_ms), page[-1].id)

        everything = store.list()
        by_order = sorted(everything, key=lambda t: (t.started_ms, t.id), reverse=True)
        assert walk() == [t.id for t in by_order] and len(by_order) == 17
        assert walk(holdings=True) == [t.id for t in by_order if t.role == CONSUMER]
    finally:
        db.close()


def test_metering_pages_walk_by_consumer_then_agreement(database_url: str) -> None:
    from dataclasses import replace

    from connector.transfer.store import TransferStore
    from tests.store.test_transfer_store import transfer

    db = open_database(database_url)
    try:
        store = TransferStore(db)
        for n in range(13):
            t = replace(transfer(n, agreement=f"ag-{n:02d}"), counterparty=f"c{n % 3}")
            store.reserve(t, max_transfers=0, max_bytes=0, now_ms=n)
        whole = [(m.consumer, m.agreement_id) for m in store.metering()]
        assert whole == sorted(whole) and len(whole) == 13
        shown: list[tuple[str, str]] = []
        after: tuple[str, ...] = ()
        while page := store.metering(after=after, limit=4):
            shown += [(m.consumer, m.agreement_id) for m in page]
            after = shown[-1]
        assert shown == whole
    finally:
        db.close()
