"""The data plane between two connectors: pull and push under agreements, masked tables,
integrity, limits under concurrency, revocation mid-stream, a provider restart, receipts
in both logs, and the consumer's obligations on what it holds."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2, transfer_pb2, transfer_pb2_grpc
from connector.audit.receipts import Receipt, receipt_id, sign_receipt, verify_receipt
from connector.demo.space import LocalSpace
from connector.errors import ConnectorError, PermissionDenied, PreconditionFailed
from connector.identity.certs import load_ed25519_private_key
from connector.identity.names import Role
from connector.node.node import Node
from connector.transfer.consumer import Progress
from tests.support.exchange import admin, agree, entries, logged_soon, offer, publish

SIZE = 3 * 1024 * 1024 + 12345


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("transfer")
    data = root / "provider-data"
    data.mkdir()
    (data / "big.bin").write_bytes(os.urandom(SIZE))
    (data / "slow.bin").write_bytes(os.urandom(64 * 1024 * 1024))
    rows = [
        {
            "time": f"08:{i:02d}",
            "road": f"Road-{i % 3}",
            "speed": str(30 + i),
            "plate": f"沪A{i:05d}",
        }
        for i in range(50)
    ]
    with (data / "flows.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["time", "road", "speed", "plate"])
        writer.writeheader()
        writer.writerows(rows)
    parts = [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]
    with LocalSpace.create(root, parts) as sp:
        sp.start_registry()
        for who in ("gov", "a", "b"):
            sp.start_connector(who)
        for pid, path, extra in (
            ("big", "big.bin", {"max_transfers": 50}),
            ("slow", "slow.bin", {}),
            ("limited", "big.bin", {"max_transfers": 2}),
        ):
            publish(
                sp,
                "gov",
                {
                    "id": pid,
                    "title": pid,
                    "grade": "general",
                    "source": {"kind": "file", "path": path},
                    "offers": [offer(**extra)],
                },
                data,
            )
        publish(
            sp,
            "gov",
            {
                "id": "flows",
                "title": "Traffic flows",
                "grade": "important",
                "fields": ["time", "road", "speed", "plate"],
                "source": {"kind": "table", "format": "csv", "path": "flows.csv"},
                "offers": [
                    offer(
                        permitted_fields=["time", "road", "speed", "plate"],
                        masks={
                            "plate": "hash",
                            "speed": {"method": "generalise", "step": 10},
                            "road": {"method": "truncate", "keep": 4},
                        },
                    )
                ],
            },
            data,
        )
        sp.data = data  # type: ignore[attr-defined]
        yield sp


def consumer(space: LocalSpace, who: str = "a") -> Node:
    return space.nodes[who]


def test_pull_a_file_ends_with_a_dual_signed_receipt_in_both_logs(space: LocalSpace) -> None:
    agreement = agree(space, "gov", "a", "big")
    events: list[str] = []
    stream = admin(space, "a").Transfer(
        admin_pb2.TransferRequest(agreement_id=agreement), timeout=60
    )
    for event in stream:
        events.append(event.event)
        last = event
    assert events[0] == "started" and events[-1] == "completed"
    info = last.transfer
    assert info.state == "completed" and info.size == SIZE
    source = (space.data / "big.bin").read_bytes()  # type: ignore[attr-defined]
    assert info.sha256 == hashlib.sha256(source).hexdigest()
    held = b"".join(
        c.data
        for c in admin(space, "a").ReadHolding(
            admin_pb2.ReadHoldingRequest(transfer_id=info.transfer_id), timeout=30
        )
    )
    assert held == source
    receipt = verify_receipt(info.receipt, space.nodes["gov"]._signing_key_of)
    assert (receipt.size, receipt.sha256, receipt.provider, receipt.consumer) == (
        SIZE,
        info.sha256,
        "gov",
        "a",
    )
    assert last.receipt_id == receipt_id(info.receipt)
    for who in ("gov", "a"):
        logged = [
            e["data"]["receipt"]
            for e in entries(space, who, "transfer.receipt")
            if e["data"]["transfer"] == info.transfer_id
        ]
        assert len(logged) == 1 and receipt_id(logged[0]) == last.receipt_id
    metering = admin(space, "gov").MeteringReport(admin_pb2.MeteringReportRequest(), timeout=10)
    mine = next(m for m in metering.agreements if m.agreement_id == agreement)
    assert (mine.transfers, mine.bytes, mine.completed, mine.completed_bytes) == (1, SIZE, 1, SIZE)


def test_push_delivers_into_the_consumers_connector(space: LocalSpace) -> None:
    agreement = agree(space, "gov", "a", "big")
    t = consumer(space).receiver.run(agreement, push=True)  # type: ignore[union-attr]
    assert t.state == "completed" and t.push
    assert Path(t.path).read_bytes() == (space.data / "big.bin").read_bytes()  # type: ignore[attr-defined]


def test_an_important_table_is_projected_and_masked_before_it_leaves(space: LocalSpace) -> None:
    agreement = agree(space, "gov", "a", "flows", approve=True)
    t = consumer(space).receiver.run(agreement)  # type: ignore[union-attr]
    text = Path(t.path).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["time", "road", "speed", "plate"] and len(rows) == 50
    assert "沪A" not in text  # no plate leaves in clear
    assert all(len(r["plate"]) == 64 for r in rows)
    assert len({r["plate"] for r in rows}) == 50
    assert {r["speed"] for r in rows} <= {"30", "40", "50", "60", "70"}
    assert {r["road"] for r in rows} == {"Road"}
    # A second transfer under the same agreement delivers the same pseudonyms.
    again = consumer(space).receiver.run(agreement)  # type: ignore[union-attr]
    assert Path(again.path).read_text() == text


def test_a_replica_without_the_staged_table_makes_it_again_and_serves_the_same_bytes(
    space: LocalSpace,
) -> None:
    """Replicas share the database, not a disk (issue 21, item 4): a pull resumed where the
    delivered form was never staged gets it made again, masks and all, under the recorded
    SHA-256."""
    agreement = agree(space, "gov", "a", "flows", approve=True)
    receiver = consumer(space).receiver
    assert receiver is not None
    t = receiver.start(agreement)
    staged = space.nodes["gov"].cfg.data_dir / "transfers" / f"{t.id}.csv"
    first = staged.read_bytes()
    staged.unlink()  # as on a replica that did not start the transfer
    done = receiver.run(transfer_id=t.id)
    assert done.state == "completed"
    assert Path(done.path).read_bytes() == first  # the bytes fixed at start
    assert hashlib.sha256(first).hexdigest() == t.sha256
    assert [e for e in entries(space, "gov", "transfer.receipt") if e["data"]["transfer"] == t.id]


def test_staged_forms_are_swept_once_their_transfer_ended_on_any_replica(
    space: LocalSpace,
) -> None:
    """Each replica removes its staged copies of transfers the shared record says have
    ended, and copies a start left without a record, once they are old."""
    agreement = agree(space, "gov", "a", "flows", approve=True)
    receiver = consumer(space).receiver
    provider = space.nodes["gov"].transfers
    assert receiver is not None and provider is not None
    where = space.nodes["gov"].cfg.data_dir / "transfers"
    running = receiver.start(agreement)
    done = receiver.run(agreement)
    old, fresh = where / "tr-orphan-old.csv", where / "tr-orphan-fresh.csv"
    for orphan in (old, fresh):
        orphan.write_bytes(b"time\n")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    provider.sweep_staging()
    assert (where / f"{running.id}.csv").exists()  # still to be pulled
    assert not (where / f"{done.id}.csv").exists()
    assert not old.exists() and fresh.exists()
    receiver.terminate(running.id, "not needed")
    provider.sweep_staging()
    assert not (where / f"{running.id}.csv").exists()
    fresh.unlink()


def test_a_table_changed_before_a_replica_makes_it_again_is_refused(space: LocalSpace) -> None:
    agreement = agree(space, "gov", "a", "flows", approve=True)
    receiver = consumer(space).receiver
    assert receiver is not None
    t = receiver.start(agreement)
    staged = space.nodes["gov"].cfg.data_dir / "transfers" / f"{t.id}.csv"
    staged.unlink()
    path = space.data / "flows.csv"  # type: ignore[attr-defined]
    original = path.read_bytes()
    try:
        path.write_bytes(original.replace(b"08:07", b"09:07"))  # an unmasked field
        with pytest.raises(PreconditionFailed, match="source changed since it started"):
            receiver.run(transfer_id=t.id)
    finally:
        path.write_bytes(original)
    provider_side = space.nodes["gov"].transfers._store.get(t.id)  # type: ignore[union-attr]
    assert provider_side.state == "failed" and t.sha256 in provider_side.reason
    assert not staged.exists()  # the other bytes are not kept
    assert not [
        e for e in entries(space, "gov", "transfer.receipt") if e["data"]["transfer"] == t.id
    ]


def test_a_replicas_own_copy_of_a_file_is_served_when_its_digest_matches(
    space: LocalSpace,
) -> None:
    """Another replica's copy of a file has its own mtime: the same bytes are served."""
    agreement = agree(space, "gov", "a", "big")
    receiver = consumer(space).receiver
    assert receiver is not None
    t = receiver.start(agreement)
    path = space.data / "big.bin"  # type: ignore[attr-defined]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    done = receiver.run(transfer_id=t.id)
    assert done.state == "completed"
    assert hashlib.sha256(Path(done.path).read_bytes()).hexdigest() == t.sha256


def test_concurrent_starts_cannot_exceed_the_transfer_limit(space: LocalSpace) -> None:
    agreement = agree(space, "gov", "b", "limited")
    receiver = consumer(space, "b").receiver
    assert receiver is not None

    def start() -> str:
        try:
            return receiver.start(agreement).id
        except PermissionDenied as exc:
            return f"refused: {exc}"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: start(), range(8)))
    started = [r for r in results if not r.startswith("refused")]
    assert len(started) == 2, results
    assert all("transfer_limit_reached" in r for r in results if r.startswith("refused"))
    metering = admin(space, "gov").MeteringReport(admin_pb2.MeteringReportRequest(), timeout=10)
    counted = next(m for m in metering.agreements if m.agreement_id == agreement)
    assert counted.transfers == 2
    started_logged = [
        e for e in entries(space, "gov", "transfer.started") if e["data"]["agreement"] == agreement
    ]
    assert len(started_logged) == 2


def _member_stub(space: LocalSpace, who: str, target: str) -> transfer_pb2_grpc.TransferServiceStub:
    return transfer_pb2_grpc.TransferServiceStub(space.nodes[who]._member_channel(target))


def test_refusals(space: LocalSpace) -> None:
    agreement = agree(space, "gov", "a", "big")
    gov_as_a = _member_stub(space, "a", "gov")
    gov_as_b = _member_stub(space, "b", "gov")
    with pytest.raises(grpc.RpcError) as err:
        gov_as_a.StartTransfer(
            transfer_pb2.StartTransferRequest(agreement_id="ag-nope"), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:  # another participant's agreement
        gov_as_b.StartTransfer(
            transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    m = gov_as_a.StartTransfer(
        transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=10
    )
    for bad in (-1, m.size + 1):
        with pytest.raises(grpc.RpcError) as err:
            list(
                gov_as_a.Pull(
                    transfer_pb2.PullRequest(transfer_id=m.transfer_id, offset=bad), timeout=10
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # b cannot pull a's transfer
        list(gov_as_b.Pull(transfer_pb2.PullRequest(transfer_id=m.transfer_id), timeout=10))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    a_key = load_ed25519_private_key(
        space.pki_dir / space.manifest.participant("a").signing_key, "k"
    )
    b_key = load_ed25519_private_key(
        space.pki_dir / space.manifest.participant("b").signing_key, "k"
    )
    good = Receipt(
        agreement=agreement,
        transfer=m.transfer_id,
        product="big",
        provider="gov",
        consumer="a",
        size=m.size,
        sha256=m.sha256,
        started_ms=m.started_ms,
        ended_ms=m.started_ms + 1,
        provider_log_index=m.provider_log_index,
        consumer_log_index=0,
    )
    wrong_hash = Receipt(**{**good.__dict__, "sha256": "0" * 64})
    for signed, code in (
        (sign_receipt(wrong_hash, a_key), grpc.StatusCode.FAILED_PRECONDITION),
        (sign_receipt(good, b_key), grpc.StatusCode.FAILED_PRECONDITION),
    ):
        with pytest.raises(grpc.RpcError) as err:
            gov_as_a.CompleteTransfer(
                transfer_pb2.CompleteTransferRequest(transfer_id=m.transfer_id, receipt=signed),
                timeout=10,
            )
        assert err.value.code() == code, err.value.details()
    refused = [
        e
        for e in entries(space, "gov", "transfer.receipt_refused")
        if e["data"]["transfer"] == m.transfer_id
    ]
    assert [e["data"]["fields"] for e in refused] == [["sha256"], ["signature"]]
    # Nothing was completed by the refused receipts; the counts are unchanged.
    metering = admin(space, "gov").MeteringReport(admin_pb2.MeteringReportRequest(), timeout=10)
    counted = next(x for x in metering.agreements if x.agreement_id == agreement)
    assert (counted.transfers, counted.completed) == (1, 0)


def test_a_product_withdrawn_after_the_agreement_is_not_delivered(space: LocalSpace) -> None:
    product = {
        "id": "withdrawn",
        "title": "withdrawn",
        "grade": "general",
        "source": {"kind": "file", "path": "big.bin"},
        "offers": [offer()],
    }
    publish(space, "gov", product, space.data)  # type: ignore[attr-defined]
    agreement = agree(space, "gov", "a", "withdrawn")
    admin(space, "gov").RemoveProduct(
        admin_pb2.RemoveProductRequest(product_id="withdrawn"), timeout=10
    )
    with pytest.raises(grpc.RpcError) as err:
        _member_stub(space, "a", "gov").StartTransfer(
            transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "withdrawn by the provider" in (err.value.details() or "")
    # Nothing was started, so nothing is counted against the agreement.
    metering = admin(space, "gov").MeteringReport(admin_pb2.MeteringReportRequest(), timeout=10)
    assert all(x.transfers == 0 for x in metering.agreements if x.agreement_id == agreement), (
        metering
    )


def test_revoking_the_agreement_stops_a_running_pull_within_a_second(space: LocalSpace) -> None:
    agreement = agree(space, "gov", "a", "slow")
    stub = _member_stub(space, "a", "gov")
    m = stub.StartTransfer(transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=10)
    revoked_at: list[float] = []

    def revoke() -> None:
        time.sleep(0.5)
        revoked_at.append(time.monotonic())
        admin(space, "gov").RevokeAgreement(
            admin_pb2.RevokeAgreementRequest(agreement_id=agreement, reason="test"), timeout=10
        )

    threading.Thread(target=revoke).start()
    received = 0
    with pytest.raises(grpc.RpcError) as err:
        for chunk in stub.Pull(transfer_pb2.PullRequest(transfer_id=m.transfer_id), timeout=60):
            received += len(chunk.data)
            time.sleep(0.05)  # a slow consumer: the stream is still running when revoked
    stopped_after = time.monotonic() - revoked_at[0]
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agreement_revoked" in (err.value.details() or "")
    assert stopped_after < 1.0, stopped_after
    assert 0 < received < m.size
    stopped = [
        e
        for e in entries(space, "gov", "transfer.stopped")
        if e["data"]["transfer"] == m.transfer_id
    ]
    assert len(stopped) == 1 and 0 < stopped[0]["data"]["sent"] < m.size
    with pytest.raises(grpc.RpcError) as err:  # and no new transfer starts
        stub.StartTransfer(transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agreement_revoked" in (err.value.details() or "")


def test_a_tampered_source_is_detected_and_fails_on_both_sides(space: LocalSpace) -> None:
    agreement = agree(space, "gov", "a", "big")
    receiver = consumer(space).receiver
    assert receiver is not None
    t = receiver.start(agreement)
    path = space.data / "big.bin"  # type: ignore[attr-defined]
    st = path.stat()
    original = path.read_bytes()
    try:
        with path.open("r+b") as f:  # same size, same mtime, one byte changed
            f.seek(1000)
            f.write(bytes([original[1000] ^ 0xFF]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(ConnectorError, match="sha256"):
            receiver.run(transfer_id=t.id)
    finally:
        path.write_bytes(original)
    assert receiver._store.get(t.id).state == "failed"
    time.sleep(0.2)
    provider_side = space.nodes["gov"].transfers._store.get(t.id)  # type: ignore[union-attr]
    assert provider_side.state == "failed" and "integrity" in provider_side.reason
    for who in ("a", "gov"):
        assert [e for e in entries(space, who, "transfer.failed") if e["data"]["transfer"] == t.id]
        assert not [
            e for e in entries(space, who, "transfer.receipt") if e["data"]["transfer"] == t.id
        ]


def test_the_pull_resumes_across_a_provider_restart(space: LocalSpace) -> None:
    agreement = agree(space, "gov", "a", "slow")
    receiver = consumer(space).receiver
    assert receiver is not None
    restarted = threading.Event()
    events: list[str] = []

    def on_progress(p: Progress) -> None:
        events.append(p.event)
        if p.event == "receiving" and p.received > 0 and not restarted.is_set():
            restarted.set()
            threading.Thread(target=restart_provider).start()

    def restart_provider() -> None:
        node = space.nodes["gov"]
        node.stop(grace=0)
        fresh = Node(node.cfg)
        fresh.start()
        space.nodes["gov"] = fresh

    t = receiver.run(agreement, progress=on_progress)
    assert restarted.is_set() and "resuming" in events
    assert t.state == "completed"
    assert hashlib.sha256(Path(t.path).read_bytes()).hexdigest() == t.sha256
    assert [e for e in entries(space, "gov", "transfer.receipt") if e["data"]["transfer"] == t.id]


def test_revocation_deletes_the_consumers_copy_and_logs_it(space: LocalSpace) -> None:
    agreement = agree(space, "gov", "b", "big")
    receiver = consumer(space, "b").receiver
    sweeper = consumer(space, "b").sweeper
    assert receiver is not None and sweeper is not None
    t = receiver.run(agreement)
    assert t.obligations.get("delete_on_revocation") is True
    assert sweeper.sweep() == []
    admin(space, "gov").RevokeAgreement(
        admin_pb2.RevokeAgreementRequest(agreement_id=agreement, reason="ended"), timeout=10
    )
    # The signed revocation sweeps the agreement's holdings as it arrives: no sweep is run
    # here, and the periodic one is 10 s apart.
    (logged,) = logged_soon(space, "b", "holding.deleted", transfer=t.id)
    assert logged["data"]["reason"] == "agreement_revoked"
    (revoked,) = logged_soon(space, "b", "agreement.revoked", agreement=agreement)
    assert logged["time_ms"] - revoked["time_ms"] < 1000
    assert sweeper.sweep() == []  # waits for the one running; nothing is deleted twice
    assert not Path(t.path).exists()
    holdings = admin(space, "b").ListTransfers(
        admin_pb2.ListTransfersRequest(holdings=True), timeout=10
    )
    assert t.id not in [h.transfer_id for h in holdings.transfers]
