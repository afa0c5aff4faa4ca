"""An agreement's metering row is created once, by one ``INSERT … ON CONFLICT DO NOTHING``:
many first reservations at once — threads, and replicas sharing PostgreSQL — neither fail
nor overwrite one another, and a transfer's row keeps its limits when a computation comes."""

from __future__ import annotations

import threading

from connector.store.database import open_database
from connector.store.models import MeteringRow
from connector.transfer.store import ensure_metering


def metering(budget: int, max_transfers: int = 0) -> MeteringRow:
    return MeteringRow(
        agreement_id="ag-1",
        consumer="lab",
        product="admissions",
        max_transfers=max_transfers,
        epsilon_budget_micro=budget,
        updated_ms=1,
    )


def test_many_first_creators_at_once_make_one_row_and_overwrite_nothing(database_url: str) -> None:
    first = open_database(database_url)
    replicas = [first] + [open_database(database_url, migrate=False) for _ in range(3)]
    try:
        barrier = threading.Barrier(12)
        errors: list[BaseException] = []

        def create(n: int) -> None:
            barrier.wait()
            try:
                ensure_metering(replicas[n % 4], metering(budget=n + 1, max_transfers=n + 1))
            except BaseException as exc:  # collected: the test says which
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with first.transaction() as tx:
            rows = tx.all("SELECT epsilon_budget_micro, max_transfers FROM metering")
        assert len(rows) == 1
        winner = rows[0]
        assert winner[0] == winner[1]  # one creator's row, whole
        ensure_metering(first, metering(budget=999, max_transfers=999))  # exists: unchanged
        with first.transaction() as tx:
            assert tx.all("SELECT epsilon_budget_micro, max_transfers FROM metering") == [winner]
    finally:
        for db in replicas:
            db.close()
