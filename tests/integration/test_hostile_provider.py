"""A provider with a valid certificate and a real agreement that lies to the consumer.

One test per lie (issue 18: findings 1, 3 and 8). Each asserts that the consumer refuses
with a clear error, that nothing was written outside its holdings directory (a canary
file beside it stays untouched), that no partial file is left, that no transfer is left
``started``, and that a refused manifest put nothing in the consumer's log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import transfer_pb2, transfer_pb2_grpc
from connector.audit.receipts import countersign_receipt
from connector.demo.space import LocalSpace
from connector.errors import ConnectorError
from connector.identity.names import Role
from connector.negotiation.agreement import parse_agreement
from connector.negotiation.store import NegotiationStore
from connector.node.node import Node
from connector.rpc.channel import open_channel
from connector.transfer.store import TransferStore
from tests.support.exchange import agree, entries, offer, publish
from tests.support.hostile import HostileProvider, Refusal, new_transfer_id

DATA = b"what the provider says the product is\n" * 300
CANARY = b"a file outside the holdings directory that no provider may touch\n"


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("hostile")
    data = root / "provider-data"
    data.mkdir()
    (data / "p.bin").write_bytes(DATA)
    (data / "q.bin").write_bytes(DATA)
    with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        for who in ("gov", "a"):
            sp.start_connector(who)
        for pid in ("p", "q"):
            publish(
                sp,
                "gov",
                {
                    "id": pid,
                    "title": pid,
                    "grade": "general",
                    "source": {"kind": "file", "path": f"{pid}.bin"},
                    "offers": [offer()],
                },
                data,
            )
        yield sp


@pytest.fixture(scope="module")
def agreement(space: LocalSpace) -> str:
    return agree(space, "gov", "a", "p")


@dataclass
class Consumer:
    """The consumer's connector, and what the tests check on it."""

    space: LocalSpace
    node: Node

    @property
    def holdings(self) -> Path:
        return self.node.cfg.data_dir / "holdings"

    @property
    def canary(self) -> Path:
        """Where ``tr-/../../canary`` lands from the holdings directory."""
        return self.node.cfg.data_dir / "canary"

    @property
    def store(self) -> TransferStore:
        assert self.node.db is not None
        return TransferStore(self.node.db)

    def receive(self, agreement: str) -> None:
        assert self.node.receiver is not None
        self.node.receiver.run(agreement)

    def started_ids(self) -> list[str]:
        return [e["data"]["transfer"] for e in entries(self.space, "a", "transfer.started")]

    def assert_contained(self, *, refused: str = "") -> None:
        """Nothing escaped, nothing half-done; with ``refused``: that manifest left no trace."""
        assert self.canary.read_bytes() == CANARY
        assert not list(self.node.cfg.data_dir.rglob("*.part"))
        states = {t.id: t.state for t in self.store.list(role="consumer")}
        assert "started" not in states.values(), states
        if refused:
            assert refused not in states
            assert refused not in self.started_ids()


@pytest.fixture
def a(space: LocalSpace) -> Consumer:
    side = Consumer(space, space.nodes["a"])
    side.canary.write_bytes(CANARY)
    return side


@pytest.fixture
def liar(space: LocalSpace, a: Consumer, agreement: str) -> Iterator[HostileProvider]:
    """``gov``'s credentials at an address of the test's choosing, honest until told."""
    assert a.node.db is not None
    signed = NegotiationStore(a.node.db).by_agreement(agreement).agreement
    assert signed
    hostile = HostileProvider(space, "gov", parse_agreement(signed), DATA)
    with hostile.serving():
        yield hostile


@pytest.mark.parametrize(
    "transfer_id",
    ["tr-/../../canary", "tr-../../canary", f"{new_transfer_id()}\n", "tr-" + "A" * 32],
)
def test_manifest_transfer_id_naming_a_path_is_refused(
    a: Consumer, liar: HostileProvider, agreement: str, transfer_id: str
) -> None:
    liar.transfer_id = transfer_id
    with pytest.raises(ConnectorError, match=r"transfer id .* is not 'tr-' and 32 lower-case hex"):
        a.receive(agreement)
    a.assert_contained(refused=transfer_id)


@pytest.mark.parametrize("fmt", ["../../canary", "/canary", "exe", "csv\n"])
def test_manifest_format_outside_the_delivered_formats_is_refused(
    a: Consumer, liar: HostileProvider, agreement: str, fmt: str
) -> None:
    honest = liar.manifest

    def lie(request: transfer_pb2.StartTransferRequest) -> transfer_pb2.TransferManifest:
        m = honest(request)
        m.format = fmt
        return m

    liar.manifest = lie
    with pytest.raises(ConnectorError, match=r"format .* is not one of"):
        a.receive(agreement)
    a.assert_contained(refused=liar.transfer_id)


@pytest.mark.parametrize(
    "obligations", ["not json", '"text"', "[1, 2]", '{"delete_after_ns": "soon"}']
)
def test_manifest_obligations_that_are_not_an_object_are_refused(
    a: Consumer, liar: HostileProvider, agreement: str, obligations: str
) -> None:
    honest = liar.manifest

    def lie(request: transfer_pb2.StartTransferRequest) -> transfer_pb2.TransferManifest:
        m = honest(request)
        m.obligations_json = obligations
        return m

    liar.manifest = lie
    with pytest.raises(ConnectorError, match="obligations"):
        a.receive(agreement)
    a.assert_contained(refused=liar.transfer_id)


def test_chunks_of_another_transfer_are_refused_and_leave_no_partial_file(
    a: Consumer, liar: HostileProvider, agreement: str
) -> None:
    honest = liar.chunks
    other = new_transfer_id()

    def lie(request: transfer_pb2.PullRequest) -> Iterator[transfer_pb2.Chunk]:
        for chunk in honest(request):
            chunk.transfer_id = other
            yield chunk

    liar.chunks = lie
    with pytest.raises(ConnectorError, match="chunk of another transfer"):
        a.receive(agreement)
    a.assert_contained()
    assert not (a.holdings / liar.transfer_id).exists()


def test_pushed_chunks_naming_a_path_are_refused_as_invalid(
    space: LocalSpace, a: Consumer, liar: HostileProvider
) -> None:
    registry = space.nodes["gov"].registry
    assert registry is not None
    address = f"127.0.0.1:{a.node.port}"
    channel = open_channel(address, liar.tls, space=space.space, peer="a", token=registry.token)
    chunks = [transfer_pb2.Chunk(transfer_id="tr-/../../canary", offset=0, data=b"x")]
    with channel, pytest.raises(grpc.RpcError) as refused:
        transfer_pb2_grpc.TransferServiceStub(channel).Push(iter(chunks), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not 'tr-' and 32 lower-case hex digits" in str(refused.value.details())
    a.assert_contained()


def test_forged_receipt_fails_the_transfer_and_removes_the_data(
    a: Consumer, liar: HostileProvider, agreement: str
) -> None:
    impostor = ed25519.Ed25519PrivateKey.generate()
    liar.receipt = lambda signed: countersign_receipt(signed, impostor, liar.key_of)
    with pytest.raises(ConnectorError, match="signature"):
        a.receive(agreement)
    a.assert_contained()
    t = a.store.get(liar.transfer_id)
    assert t.state == "failed" and "receipt" in t.reason
    assert not (a.holdings / liar.transfer_id).exists()
    receipts = [e["data"]["transfer"] for e in entries(a.space, "a", "transfer.receipt")]
    assert liar.transfer_id not in receipts
    assert liar.terminated and liar.terminated[0][0] == liar.transfer_id


def test_replayed_receipt_of_another_transfer_is_refused(
    a: Consumer, liar: HostileProvider, agreement: str
) -> None:
    a.receive(agreement)  # an honest transfer, whose countersigned receipt the liar keeps
    first = liar.transfer_id
    liar.transfer_id = new_transfer_id()
    liar.receipt = lambda signed: liar.countersigned[0]
    with pytest.raises(ConnectorError, match="receipt does not match this transfer"):
        a.receive(agreement)
    a.assert_contained()
    store = a.store
    assert store.get(liar.transfer_id).state == "failed"
    assert store.get(first).state == "completed"
    assert (a.holdings / first).read_bytes() == DATA


def test_duplicate_transfer_id_is_refused_and_logged_once(
    a: Consumer, liar: HostileProvider, agreement: str
) -> None:
    a.receive(agreement)
    before = a.started_ids()
    held = (a.holdings / liar.transfer_id).read_bytes()
    # The same id again, for other bytes: the manifest must not be recorded or logged.
    liar.data = DATA[::-1]
    with pytest.raises(ConnectorError, match="already"):
        a.receive(agreement)
    assert a.started_ids() == before and before.count(liar.transfer_id) == 1
    a.assert_contained()
    assert a.store.get(liar.transfer_id).state == "completed"
    assert (a.holdings / liar.transfer_id).read_bytes() == held


def test_manifest_for_another_product_is_refused(
    a: Consumer, liar: HostileProvider, agreement: str
) -> None:
    honest = liar.manifest

    def lie(request: transfer_pb2.StartTransferRequest) -> transfer_pb2.TransferManifest:
        m = honest(request)
        m.product_id = "q"  # the provider's other product, not the one agreed
        return m

    liar.manifest = lie
    with pytest.raises(ConnectorError, match=r"product 'q'.* agreement .* is for 'p'"):
        a.receive(agreement)
    a.assert_contained(refused=liar.transfer_id)


def test_manifest_keeping_data_past_the_agreement_is_refused(
    a: Consumer, liar: HostileProvider, agreement: str
) -> None:
    honest = liar.manifest

    def lie(request: transfer_pb2.StartTransferRequest) -> transfer_pb2.TransferManifest:
        m = honest(request)
        obligations = json.loads(m.obligations_json)
        obligations["delete_after_ns"] = liar.agreement.valid_until_ns + 1
        m.obligations_json = json.dumps(obligations)
        return m

    liar.manifest = lie
    with pytest.raises(ConnectorError, match="delete_after_ns"):
        a.receive(agreement)
    a.assert_contained(refused=liar.transfer_id)


def test_honest_provider_double_completes(
    a: Consumer, liar: HostileProvider, agreement: str
) -> None:
    """The kit's honest answers are accepted: each lie above is what gets refused."""
    a.receive(agreement)
    assert (a.holdings / liar.transfer_id).read_bytes() == DATA
    a.assert_contained()


def test_provider_error_message_cannot_forge_lines_in_the_consumer_record(
    a: Consumer, liar: HostileProvider, agreement: str
) -> None:
    def refuse(request: transfer_pb2.PullRequest) -> Iterator[transfer_pb2.Chunk]:
        raise Refusal(
            grpc.StatusCode.PERMISSION_DENIED, "revoked\n2026-01-01 INFO all is well\x1b[2K"
        )
        yield  # a generator, as Pull's answer is

    liar.chunks = refuse
    with pytest.raises(ConnectorError, match="revoked"):
        a.receive(agreement)
    a.assert_contained()
    t = a.store.get(liar.transfer_id)
    assert t.state == "terminated" and "revoked" in t.reason
    assert "\n" not in t.reason and "\x1b" not in t.reason


def test_pushed_chunks_with_a_gap_are_refused(
    a: Consumer, liar: HostileProvider, agreement: str
) -> None:
    honest = liar.chunks

    def lie(request: transfer_pb2.PullRequest) -> Iterator[transfer_pb2.Chunk]:
        for chunk in honest(request):
            chunk.offset += 1  # each chunk claims to start one byte later than it does
            yield chunk

    liar.chunks = lie
    assert a.node.receiver is not None
    with pytest.raises(ConnectorError, match="gap"):
        a.node.receiver.run(agreement, push=True)
    a.assert_contained()
    assert a.store.get(liar.transfer_id).state in ("failed", "terminated")


def test_terminating_an_interrupted_transfer_removes_its_partial_file(
    a: Consumer, liar: HostileProvider, agreement: str
) -> None:
    """A receive cut short by a restart leaves ``ID.part``; ending the transfer removes it."""
    assert a.node.receiver is not None
    t = a.node.receiver.start(agreement)
    a.holdings.mkdir(exist_ok=True)
    partial = a.holdings / f"{t.id}.part"
    partial.write_bytes(DATA[:100])
    ended = a.node.receiver.terminate(t.id, "no longer needed")
    assert ended.state == "terminated"
    a.assert_contained()
    assert liar.terminated == [(t.id, "no longer needed")]
