"""The DSP transfer processes (``dsp_transfer``) on SQLite and PostgreSQL: who suspended a
process is kept with it (migration 0020), the open processes under an agreement are found
through their transfers, and a transfer's process is found from either role."""

from __future__ import annotations

import pytest

from connector.dsp.transfers import DspTransfer, DspTransferStore
from connector.errors import NotFound, PreconditionFailed
from connector.negotiation.outbox import Pending
from connector.store.database import Database
from connector.transfer.store import TransferStore
from tests.store.test_transfer_store import transfer


def process(transfer_id: str, role: str = "provider", peer: str = "urn:uuid:c") -> DspTransfer:
    return DspTransfer(
        transfer_id=transfer_id,
        role=role,
        counterparty="a",
        peer_pid=peer,
        callback="https://a.example:8443",
        request_digest="",
        state="STARTED",
        token_expires_ms=10,
        created_ms=1,
        updated_ms=1,
    )


def test_suspended_by_is_kept_and_open_processes_are_found_by_agreement(db: Database) -> None:
    handed: list[Pending] = []
    store = DspTransferStore(db, handed.extend)
    transfers = TransferStore(db)
    for n, agreement in ((1, "ag-1"), (2, "ag-1"), (3, "ag-2")):
        transfers.reserve(transfer(n, agreement=agreement), max_transfers=0, max_bytes=0, now_ms=n)
        store.add(process(f"tr-{n}", peer=f"urn:uuid:c{n}"))
    # A consumer's process (its peer's id is the transfer's) is not the provider's.
    store.add(process("dspc-1", role="consumer", peer="tr-1"))
    moved = store.move(
        "tr-1", expect=frozenset({"STARTED"}), now_ms=5, state="SUSPENDED", suspended_by="consumer"
    )
    assert (moved.state, moved.suspended_by) == ("SUSPENDED", "consumer")
    assert store.get("tr-1").suspended_by == "consumer"
    store.move("tr-2", expect=frozenset({"STARTED"}), now_ms=5, state="TERMINATED")
    assert [p.transfer_id for p in store.open_under("ag-1")] == ["tr-1"]
    assert [p.transfer_id for p in store.open_under("ag-2")] == ["tr-3"]
    assert store.of_transfer("tr-1", "a", "provider").transfer_id == "tr-1"
    assert store.of_transfer("tr-1", "a", "consumer").transfer_id == "dspc-1"
    with pytest.raises(NotFound):
        store.of_transfer("dspc-1", "a", "provider")  # a consumer's process, by its own id
    with pytest.raises(NotFound):
        store.of_transfer("tr-1", "b", "consumer")  # another counterparty's
    with pytest.raises(PreconditionFailed):
        store.move("tr-2", expect=frozenset({"STARTED"}), now_ms=6, state="SUSPENDED")
    with pytest.raises(TypeError):
        store.move("tr-3", expect=frozenset({"STARTED"}), now_ms=6, counterparty="b")
    assert handed == []
