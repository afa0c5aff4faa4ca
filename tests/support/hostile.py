"""A provider that lies: a real ``TransferService`` holding a member's real credentials.

``HostileProvider`` serves gRPC over mutual TLS with the certificate the space's CA
issued to a member, signs with that member's signing key, and is enrolled in the registry
at its own address, so the consumer's real connector finds it, verifies its certificate
and talks to it as it would to the honest provider. Each part of its answer is a function
a test replaces to tell one lie: the manifest, the chunks, the pushed stream, the
countersigned receipt. Left alone, it answers honestly (the transfer completes), which is
what a lie is measured against.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import stream_pb2, stream_pb2_grpc, transfer_pb2, transfer_pb2_grpc
from connector.audit.receipts import countersign_receipt
from connector.demo.space import LocalSpace
from connector.identity.certs import load_ed25519_private_key, load_ed25519_public_key
from connector.negotiation.agreement import Agreement
from connector.rpc.channel import TlsIdentity, open_channel

__all__ = ["HostileProvider", "HostileStreams", "Refusal", "new_transfer_id"]


class Refusal(Exception):
    """Raised by a replaced answer: the call ends with ``code`` and ``details``, verbatim."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class HostileProvider(transfer_pb2_grpc.TransferServiceServicer):
    """Speaks for ``who`` (with its certificate and signing key) and lies as told."""

    def __init__(self, space: LocalSpace, who: str, agreement: Agreement, data: bytes) -> None:
        self.space, self.who, self.agreement, self.data = space, who, agreement, data
        pki = space.pki_dir
        me = space.manifest.participant(who)
        self.tls = TlsIdentity.load(
            pki / space.manifest.ca_cert, pki / me.tls_cert, pki / me.tls_key
        )
        self.signing_key = load_ed25519_private_key(pki / me.signing_key)
        self.chunk_size = 4096
        self.transfer_id = new_transfer_id()
        # The parts a test replaces, each honest by default.
        self.manifest: Callable[[transfer_pb2.StartTransferRequest], transfer_pb2.TransferManifest]
        self.manifest = self.honest_manifest
        self.chunks: Callable[[transfer_pb2.PullRequest], Iterator[transfer_pb2.Chunk]]
        self.chunks = self.honest_chunks
        self.receipt: Callable[[str], str] = self.countersign
        self.terminated: list[tuple[str, str]] = []
        self.countersigned: list[str] = []
        self.streams: HostileStreams | None = None
        """Served too when set: the provider's side of a stream subscription."""

    # -- honest answers, which lies start from ------------------------------------------

    def honest_manifest(
        self, request: transfer_pb2.StartTransferRequest
    ) -> transfer_pb2.TransferManifest:
        """What the real provider would answer for ``self.data`` under the agreement."""
        a = self.agreement
        return transfer_pb2.TransferManifest(
            transfer_id=self.transfer_id,
            agreement_id=request.agreement_id,
            product_id=a.product,
            size=len(self.data),
            sha256=hashlib.sha256(self.data).hexdigest(),
            chunk_size=self.chunk_size,
            format="",
            obligations_json=json.dumps(
                {
                    "delete_on_revocation": True,
                    **a.obligations,
                    "delete_after_ns": a.valid_until_ns,
                },
                sort_keys=True,
            ),
            decision_id=uuid.uuid4().hex,
            started_ms=1,
            provider_log_index=0,
            push=request.push,
        )

    def honest_chunks(self, request: transfer_pb2.PullRequest) -> Iterator[transfer_pb2.Chunk]:
        """``self.data`` from the requested offset, under the requested transfer id."""
        for at in range(request.offset, len(self.data), self.chunk_size):
            yield transfer_pb2.Chunk(
                transfer_id=request.transfer_id,
                offset=at,
                data=self.data[at : at + self.chunk_size],
            )

    def countersign(self, signed: str) -> str:
        """The honest countersignature of the consumer's receipt (kept, to replay later)."""
        countersigned = countersign_receipt(signed, self.signing_key, self.key_of)
        self.countersigned.append(countersigned)
        return countersigned

    def key_of(self, participant: str) -> ed25519.Ed25519PublicKey:
        """A member's public signing key, from the space's PKI."""
        pki = self.space.pki_dir
        return load_ed25519_public_key(
            pki / self.space.manifest.participant(participant).signing_public_key
        )

    # -- TransferService ----------------------------------------------------------------

    def StartTransfer(self, request: Any, context: Any) -> transfer_pb2.TransferManifest:
        try:
            return self.manifest(request)
        except Refusal as r:
            context.abort(r.code, r.details)
            raise

    def Pull(self, request: Any, context: Any) -> Iterator[transfer_pb2.Chunk]:
        try:
            yield from self.chunks(request)
        except Refusal as r:
            context.abort(r.code, r.details)

    def RequestPush(self, request: Any, context: Any) -> transfer_pb2.PushAck:
        """Push ``self.chunks`` into the consumer, with this member's real token."""
        consumer = self.agreement.consumer
        address = f"127.0.0.1:{self.space.nodes[consumer].port}"
        registry = self.space.nodes[self.who].registry
        assert registry is not None
        channel = open_channel(
            address, self.tls, space=self.space.space, peer=consumer, token=registry.token
        )
        try:
            ack: transfer_pb2.PushAck = transfer_pb2_grpc.TransferServiceStub(channel).Push(
                self.chunks(request), timeout=30
            )
        finally:
            channel.close()
        return ack

    def CompleteTransfer(self, request: Any, context: Any) -> transfer_pb2.CompleteTransferResponse:
        return transfer_pb2.CompleteTransferResponse(receipt=self.receipt(request.receipt))

    def TerminateTransfer(
        self, request: Any, context: Any
    ) -> transfer_pb2.TerminateTransferResponse:
        self.terminated.append((request.transfer_id, request.reason))
        return transfer_pb2.TerminateTransferResponse(
            transfer_id=request.transfer_id, state="failed"
        )

    # -- being found --------------------------------------------------------------------

    @contextmanager
    def serving(self) -> Iterator[HostileProvider]:
        """Serve on a loopback port and enrol ``who`` at it; put the real address back after."""
        pki = self.space.pki_dir
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        transfer_pb2_grpc.add_TransferServiceServicer_to_server(self, server)
        if self.streams is not None:
            stream_pb2_grpc.add_StreamServiceServicer_to_server(self.streams, server)
        creds = grpc.ssl_server_credentials(
            [(self.tls.key_pem, self.tls.cert_pem)],
            root_certificates=(pki / self.space.manifest.ca_cert).read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        server.start()
        self._enrol_at(port)
        try:
            yield self
        finally:
            real = self.space.nodes.get(self.who)
            if real is not None:
                self._enrol_at(real.port)
            server.stop(0).wait()

    def _enrol_at(self, port: int) -> None:
        """Enrol ``who`` at ``port`` and have every member look it up there at once (members
        otherwise keep the signed directory they cached until its next refresh)."""
        self.space.enrol(self.who, f"127.0.0.1:{port}", replace=True)
        for node in self.space.nodes.values():
            if node.registry is not None:
                node.registry.refresh_directory()


class HostileStreams(stream_pb2_grpc.StreamServiceServicer):
    """A stream provider that starts a subscription as the honest one would (from the
    consumer's resume point: its chain ``head`` and ``next_window``) and then sends
    ``frames`` as they are, whatever they say; then ends the call with ``refusal`` if set."""

    def __init__(
        self, agreement: Agreement, fields: list[str], head: str, next_window: int = 0
    ) -> None:
        self.agreement, self.fields, self.head = agreement, fields, head
        self.next_window = next_window
        self.obligations_json = "{}"
        self.frames: list[stream_pb2.SubscribeDown] = []
        self.receipted: list[str] = []
        """Countersigned receipts the start claims were lost on the way (sent again)."""
        self.refusal: Refusal | None = None

    def Subscribe(self, requests: Any, context: Any) -> Iterator[stream_pb2.SubscribeDown]:
        start = next(requests).start
        yield stream_pb2.SubscribeDown(
            started=stream_pb2.StreamStarted(
                agreement_id=start.agreement_id,
                product_id=self.agreement.product,
                fields=self.fields,
                after_sequence=start.from_sequence,
                head=self.head,
                next_window=self.next_window,
                obligations_json=self.obligations_json,
                decision_id=uuid.uuid4().hex,
                receipted=self.receipted,
            )
        )
        yield from self.frames
        if self.refusal is not None:
            context.abort(self.refusal.code, self.refusal.details)
        for _ in requests:  # hold the call open until the consumer leaves
            pass


def new_transfer_id() -> str:
    """A transfer id of the form the real provider makes."""
    return f"tr-{uuid.uuid4().hex}"
