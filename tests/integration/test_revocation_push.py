"""Revocations reach providers at once (issue 18, findings 4 and 6).

The operator pushes each new signed revocation list over ``WatchRevocations``; members
apply it the moment it arrives. So a revoked authorised-operation grant, or a revoked
participant, is refused within a couple of seconds (not at the next periodic refresh, 30 s
here, nor at the consumer's next token refresh), and its running transfers stop. A list
that is forged or older than the one held is refused whoever pushes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import (
    admin_pb2,
    registry_pb2,
    registry_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)
from connector.clock import SystemClock
from connector.demo.space import LocalSpace
from connector.identity.certs import load_ed25519_private_key, load_ed25519_public_key
from connector.identity.names import Role, participant_uri
from connector.identity.pki import init_space
from connector.registry.client import RegistryClient
from connector.registry.revocation import RevocationList, sign_revocation_list
from connector.rpc.channel import TlsIdentity, open_channel
from tests.support.exchange import admin, agree, entries, offer, publish

YEAR_NS = 365 * 86_400 * 10**9
BOUND = 2.0
"""Seconds within which a revocation must be in force at the provider."""
CHUNK_PAUSE = 0.08
"""The consumer reads slowly, so that a pull of 48 chunks lasts about four seconds."""


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("push")
    data = root / "data"
    data.mkdir()
    (data / "big.bin").write_bytes(b"x" * (48 * 1024 * 1024))
    parts = [
        ("gov", Role.GOVERNMENT),
        ("opa", Role.ENTERPRISE),
        ("ent", Role.ENTERPRISE),
        ("idle", Role.ENTERPRISE),
    ]
    with LocalSpace.create(root, parts) as sp:
        sp.start_registry()
        for who, _ in parts:
            sp.start_connector(who)
        # The fallback refresh is the default 30 s: everything below must beat it.
        assert sp.configs["gov"].registry.revocation_refresh_seconds >= 30
        for pid, extra in (
            ("roads", {"tags": ["traffic"]}),  # public data, operated under a grant
            ("plain", {"tags": ["misc"]}),  # enterprise data under a plain contract
        ):
            publish(
                sp,
                "gov",
                {
                    "id": pid,
                    "title": pid,
                    "grade": "general",
                    **extra,
                    "source": {"kind": "file", "path": "big.bin"},
                    "offers": [offer(purposes=["traffic-analytics"])],
                },
                data,
            )
        admin(sp, "gov").RegisterProduct(
            admin_pb2.RegisterOwnProductRequest(product_id="roads", public=True), timeout=10
        )
        yield sp


def _pinned_stub(
    space: LocalSpace, consumer: str, provider: str
) -> transfer_pb2_grpc.TransferServiceStub:
    """The consumer's transfer stub, calling with the token it holds now and no other."""
    node = space.nodes[consumer]
    assert node.registry is not None and node._tls is not None
    token = node.registry.token()
    return transfer_pb2_grpc.TransferServiceStub(
        open_channel(
            space.nodes[provider].advertised_address,
            node._tls.identity,
            space=space.space,
            peer=provider,
            token=lambda: token,
        )
    )


def _pull_while(
    stub: transfer_pb2_grpc.TransferServiceStub,
    agreement_id: str,
    revoke: Callable[[], object],
) -> tuple[grpc.RpcError, float, int, int]:
    """Start a pull, revoke after half a second, read slowly until the provider stops it.

    Returns the error, seconds from the revocation to the stop, bytes received, size.
    """
    m = stub.StartTransfer(transfer_pb2.StartTransferRequest(agreement_id=agreement_id), timeout=10)
    revoked_at: list[float] = []

    def later() -> None:
        time.sleep(0.5)
        revoke()
        revoked_at.append(time.monotonic())

    worker = threading.Thread(target=later)
    worker.start()
    received = 0
    with pytest.raises(grpc.RpcError) as err:
        for chunk in stub.Pull(transfer_pb2.PullRequest(transfer_id=m.transfer_id), timeout=60):
            received += len(chunk.data)
            time.sleep(CHUNK_PAUSE)
    stopped = time.monotonic()
    worker.join()
    assert revoked_at, "the pull ended before the revocation"
    return err.value, stopped - revoked_at[0], received, m.size


def _refused_within(start: Callable[[], object], bound: float) -> grpc.RpcError:
    """Retry ``start`` until it is refused; fail if that takes longer than ``bound``."""
    deadline = time.monotonic() + bound
    while True:
        try:
            start()
        except grpc.RpcError as err:
            return err
        assert time.monotonic() < deadline, f"still served {bound} s after the revocation"
        time.sleep(0.1)


def test_grant_revocation_stops_transfers_before_the_consumer_refreshes_its_token(
    space: LocalSpace,
) -> None:
    now = time.time_ns()
    g = space.grant(
        "opa",
        scope=["traffic"],
        purposes=["traffic-analytics"],
        start_ns=now - 3600 * 10**9,
        end_ns=now + YEAR_NS,
        body="City Data Bureau",
    )
    space.refresh()  # opa's token carries the grant from now on
    agreement_id = agree(space, "gov", "opa", "roads", purpose="traffic-analytics")
    # Every call below uses this token, which still carries the grant after it is revoked.
    stub = _pinned_stub(space, "opa", "gov")

    err, delay, received, size = _pull_while(
        stub, agreement_id, lambda: space.revoke_grant(g.id, "scope ended")
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    assert "operation_grant_revoked" in (err.details() or "")
    assert delay < BOUND and 0 < received < size
    # The list's arrival ends the transfer's record (its reason logged), and the pull in
    # flight stops on it, logging the bytes it had sent.
    ended = [e["data"]["reason"] for e in entries(space, "gov", "transfer.terminated")]
    assert "operation_grant_revoked" in ended
    stopped = [e["data"]["reason"] for e in entries(space, "gov", "transfer.stopped")]
    assert any("operation_grant_revoked" in reason for reason in stopped)

    refused = _refused_within(
        lambda: stub.StartTransfer(
            transfer_pb2.StartTransferRequest(agreement_id=agreement_id), timeout=10
        ),
        BOUND,
    )
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operation_grant_revoked" in (refused.details() or ""), refused.details()


def test_participant_revocation_is_refused_within_seconds_and_stops_its_transfer(
    space: LocalSpace,
) -> None:
    agreement_id = agree(space, "gov", "ent", "plain", purpose="traffic-analytics")
    stub = _pinned_stub(space, "ent", "gov")

    err, delay, received, size = _pull_while(
        stub, agreement_id, lambda: space.revoke("ent", "test: revoked")
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    assert "consumer_revoked" in (err.details() or "")
    assert delay < BOUND and 0 < received < size

    refused = _refused_within(
        lambda: stub.StartTransfer(
            transfer_pb2.StartTransferRequest(agreement_id=agreement_id), timeout=10
        ),
        0.5,  # the list that stopped the pull is already in force
    )
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (refused.details() or "")


def test_a_revocation_ends_the_transfers_it_stops_at_once_with_nobody_pulling(
    space: LocalSpace,
) -> None:
    agreement_id = agree(space, "gov", "idle", "plain", purpose="traffic-analytics")
    stub = _pinned_stub(space, "idle", "gov")
    m = stub.StartTransfer(transfer_pb2.StartTransferRequest(agreement_id=agreement_id), timeout=10)
    provider = space.nodes["gov"].transfers
    assert provider is not None and provider._store.get(m.transfer_id).state == "started"
    space.revoke("idle", "test: revoked")
    # No pull comes to find the revocation: the list's arrival ends the record itself.
    deadline = time.monotonic() + BOUND
    while (t := provider._store.get(m.transfer_id)).state == "started":
        assert time.monotonic() < deadline, f"still started {BOUND} s after the revocation"
        time.sleep(0.05)
    assert (t.state, t.reason) == ("terminated", "consumer_revoked")
    ended = [
        e["data"]["reason"]
        for e in entries(space, "gov", "transfer.terminated")
        if e["data"]["transfer"] == m.transfer_id
    ]
    assert ended == ["consumer_revoked"]


# -- a registry that pushes lies --------------------------------------------------------


class _LyingRegistry(registry_pb2_grpc.RegistryServiceServicer):
    """Pushes the given signed lists in order, then holds the stream open."""

    def __init__(self, lists: list[str]) -> None:
        self.lists = lists
        self.done = threading.Event()

    def WatchRevocations(
        self, request: registry_pb2.WatchRevocationsRequest, context: grpc.ServicerContext
    ) -> Iterator[registry_pb2.GetRevocationListResponse]:
        for signed in self.lists:
            yield registry_pb2.GetRevocationListResponse(revocation_list=signed)
        while context.is_active() and not self.done.wait(0.1):
            pass


def test_forged_or_older_pushed_revocation_list_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = init_space(tmp_path, "city", [("a", Role.ENTERPRISE)])
    op, me = manifest.participant("operator"), manifest.participant("a")
    operator_key = load_ed25519_private_key(tmp_path / op.signing_key)
    issuer = participant_uri("city", "operator")
    now = int(time.time())

    def signed(
        serial: int, iat: int, revoked: set[str], key: ed25519.Ed25519PrivateKey = operator_key
    ) -> str:
        rl = RevocationList(serial, iat, frozenset(revoked), frozenset())
        return sign_revocation_list(key, issuer=issuer, space="city", revocations=rl)

    lying = _LyingRegistry(
        [
            signed(5, now, {"mallory"}),  # genuine: mallory is revoked
            signed(4, now, set()),  # genuine but older: would bring mallory back
            signed(9, now + 1, set(), ed25519.Ed25519PrivateKey.generate()),  # forged
            signed(5, now + 2, {"mallory"}),  # the genuine list again, re-signed later
        ]
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(lying, server)
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [((tmp_path / op.tls_key).read_bytes(), (tmp_path / op.tls_cert).read_bytes())],
            root_certificates=(tmp_path / "ca.pem").read_bytes(),
            require_client_auth=True,
        ),
    )
    server.start()
    client = RegistryClient(
        address=f"127.0.0.1:{port}",
        space="city",
        operator_id="operator",
        issuer=issuer,
        tls=TlsIdentity.load(tmp_path / "ca.pem", tmp_path / me.tls_cert, tmp_path / me.tls_key),
        operator_key=load_ed25519_public_key(tmp_path / op.signing_public_key),
        clock=SystemClock(),
    )
    stop = threading.Event()
    watcher = threading.Thread(target=client.watch_revocations, args=(stop, 1.0))
    caplog.set_level(logging.WARNING, logger="connector.registry.client")
    watcher.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            held = client.revocations_held
            if held is not None and held.issued_at == now + 2:
                break
            time.sleep(0.05)
        held = client.revocations_held
        assert held is not None and held.issued_at == now + 2, "the pushed lists never arrived"
        assert held.serial == 5 and held.participants == {"mallory"}
        refusals = [
            str(getattr(r, "reason", ""))
            for r in caplog.records
            if r.getMessage() == "pushed revocation list refused"
        ]
        assert len(refusals) == 2, refusals
        assert "older" in refusals[0] and "signature" in refusals[1], refusals
    finally:
        stop.set()
        lying.done.set()
        client.stop_watching()
        watcher.join(timeout=5)
        client.close()
        server.stop(0)
    assert not watcher.is_alive()


def test_revocation_streams_are_capped_and_their_workers_given_back(space: LocalSpace) -> None:
    node = space.nodes["gov"]
    assert node._tls is not None
    op = space.manifest.operator_id
    cap = space.configs[op].registry.max_watchers
    channel = open_channel(space.registry_address, node._tls.identity, space=space.space, peer=op)
    stub = registry_pb2_grpc.RegistryServiceStub(channel)
    request = registry_pb2.WatchRevocationsRequest()

    def watch() -> tuple[grpc.Future, grpc.RpcError | None]:  # type: ignore[type-arg]
        call = stub.WatchRevocations(request, timeout=10)
        try:
            assert next(call).revocation_list  # the list in force comes at once
        except grpc.RpcError as exc:
            return call, exc
        return call, None

    # The connectors of the space hold some of the slots; take the rest, then one more.
    held: list[grpc.Future] = []  # type: ignore[type-arg]
    try:
        for _ in range(cap + 1):
            call, refused = watch()
            held.append(call)
            if refused is not None:
                break
        assert refused is not None and len(held) <= cap + 1, "no cap on revocation streams"
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert "GetRevocationList" in (refused.details() or "")
    finally:
        for call in held:
            call.cancel()
    # A cancelled stream gives its worker back within a poll of the registry.
    deadline = time.monotonic() + 3
    while True:
        call, refused = watch()
        call.cancel()
        if refused is None:
            break
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() < deadline, "cancelled streams still hold their slots"
        time.sleep(0.2)
    channel.close()
