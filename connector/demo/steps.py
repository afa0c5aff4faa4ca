"""What the demo's scenarios do with a running space, as a participant's admin would.

Every helper goes through the participant's own ``AdminService`` over mutual TLS with its
administrator certificate — the same calls ``tds negotiate``, ``tds transfer`` and
``tds consent`` make — and reports what happened as a short string an outcome can compare.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from connector._proto.tds.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    compute_pb2,
    compute_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
)
from connector.audit import jws
from connector.demo.space import LocalSpace, rpc_code
from connector.node.clients import admin_channel

__all__ = ["Check", "Following", "Steps", "named"]


class Check(Protocol):
    """Records and narrates one outcome of a scenario's step."""

    def __call__(
        self,
        scenario: str,
        step: str,
        expected: str,
        observed: str,
        *,
        measured: str = "",
        skipped: str = "",
    ) -> None:
        """``measured``: a figure taken on the way, shown beside the outcome (how long a
        stop took); ``skipped``: why the step could not run here (a service the demo
        needs is not reachable): then it is neither as expected nor failed."""


FAR_NS = 4_000_000_000_000_000_000


def named(detail: str, reason: str) -> str:
    """``reason`` if the refusal names it, else the whole refusal (to show what went wrong)."""
    return reason if reason in detail else detail


@dataclass
class Pulled:
    """How a transfer ended, for outcomes."""

    state: str
    transfer_id: str = ""
    size: int = 0
    sha256: str = ""
    receipt_id: str = ""
    detail: str = ""


@dataclass
class Answered:
    """How a question ended, for outcomes."""

    state: str
    answer: dict[str, Any]
    receipt: dict[str, Any]
    detail: str = ""


class Following:
    """A consumer's admin following a stream (``tds subscribe``), read on a thread of its
    own while the scenario goes on."""

    def __init__(self, space: LocalSpace, consumer: str, agreement_id: str) -> None:
        self._channel = admin_channel(space.configs[consumer])
        self._call = stream_pb2_grpc.StreamServiceStub(self._channel).Follow(
            stream_pb2.FollowRequest(agreement_id=agreement_id)
        )
        self.events: list[stream_pb2.FollowEvent] = []
        self.error: grpc.RpcError | None = None
        self.ended_at = 0.0
        """``time.monotonic()`` when the call ended (0 while it runs)."""
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True, name="demo-follow")
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._call:
                self.events.append(event)
        except grpc.RpcError as err:
            self.error = err
        self.ended_at = time.monotonic()

    def kept(self) -> int:
        """The last sequence the consumer keeps (its last countersigned window's)."""
        return max((e.kept_sequence for e in self.events), default=0)

    def wait_kept(self, sequence: int, timeout: float = 20.0) -> bool:
        """Wait until the consumer keeps ``sequence``; whether it did (not if it ended)."""
        deadline = time.monotonic() + timeout
        while self.kept() < sequence:
            if self.ended_at or time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def wait_end(self, timeout: float = 10.0) -> bool:
        """Wait for the call to end (the provider stopped it); whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def ended(self) -> str:
        """How the call ended: ``STATUS: details``, ``ended`` or ``running``."""
        if self.error is not None:
            return f"{rpc_code(self.error)}: {self.error.details() or ''}"
        return "ended" if self.ended_at else "running"

    def close(self) -> None:
        """Cancel the call (the connector suspends the subscription) and close (once)."""
        if self._closed:
            return
        self._closed = True
        self._call.cancel()  # type: ignore[no-untyped-call]
        self._thread.join(10)
        self._channel.close()


class Steps:
    """Admin operations of the demo's participants."""

    def __init__(self, space: LocalSpace) -> None:
        self.space = space
        self._channels: dict[str, grpc.Channel] = {}

    def _channel(self, participant: str) -> grpc.Channel:
        if participant not in self._channels:
            self._channels[participant] = admin_channel(self.space.configs[participant])
        return self._channels[participant]

    def admin(self, participant: str) -> admin_pb2_grpc.AdminServiceStub:
        """The participant's own admin stub (one channel each, reused)."""
        return admin_pb2_grpc.AdminServiceStub(self._channel(participant))

    def close(self) -> None:
        """Close every admin channel."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def publish(self, provider: str, description: dict[str, Any], base_dir: str = "") -> str:
        """Publish a product; "published" or the refusal's status."""
        try:
            self.admin(provider).AddProduct(
                admin_pb2.AddProductRequest(
                    description=json.dumps(description), format="json", base_dir=base_dir
                ),
                timeout=10,
            )
            return "published"
        except grpc.RpcError as err:
            return rpc_code(err)

    def register_public(self, provider: str, product: str) -> str:
        """List a product publicly with the registry; its registration code."""
        resp = self.admin(provider).RegisterProduct(
            admin_pb2.RegisterOwnProductRequest(product_id=product, public=True), timeout=10
        )
        return str(json.loads(resp.product_json).get("registration_code", ""))

    def follow(
        self, participant: str, pid: str, until: tuple[str, ...], timeout: float = 20.0
    ) -> admin_pb2.NegotiationInfo:
        """Poll a negotiation until it reaches one of ``until`` (or time runs out)."""
        stub = self.admin(participant)
        deadline = time.monotonic() + timeout
        info = stub.GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
        while info.state not in until and time.monotonic() < deadline:
            time.sleep(0.05)
            info = stub.GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
        return info

    def request(
        self, consumer: str, provider: str, product: str, purpose: str, offer: str = "standard"
    ) -> admin_pb2.NegotiationInfo:
        """Ask for a contract; the consumer's negotiation once it settles or waits."""
        info = self.admin(consumer).StartNegotiation(
            admin_pb2.StartNegotiationRequest(
                provider=provider, product_id=product, offer_id=offer, purpose=purpose
            ),
            timeout=10,
        )
        return self.follow(consumer, info.pid, ("FINALIZED", "TERMINATED"), timeout=8)

    def waiting_for(self, provider: str, consumer: str, timeout: float = 10.0) -> list[str]:
        """Provider-side pids of the consumer's negotiations waiting for approval."""
        deadline = time.monotonic() + timeout
        while True:
            pending = self.admin(provider).ListNegotiations(
                admin_pb2.ListNegotiationsRequest(pending_approval=True), timeout=10
            )
            found = [n.pid for n in pending.negotiations if n.counterparty == consumer]
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def pull(self, consumer: str, agreement_id: str) -> Pulled:
        """Receive under an agreement into the consumer's holdings, as ``tds transfer``."""
        try:
            last = None
            for event in self.admin(consumer).Transfer(
                admin_pb2.TransferRequest(agreement_id=agreement_id), timeout=120
            ):
                last = event
        except grpc.RpcError as err:
            return Pulled(state=rpc_code(err), detail=err.details() or "")
        if last is None:
            return Pulled(state="no events")
        t = last.transfer
        return Pulled(
            state=t.state or last.event,
            transfer_id=t.transfer_id,
            size=t.size,
            sha256=t.sha256,
            receipt_id=last.receipt_id,
            detail=t.reason or last.detail,
        )

    def ask(self, consumer: str, agreement_id: str, question: str) -> Answered:
        """Ask a question under a compute agreement, as ``tds compute``."""
        channel = admin_channel(self.space.configs[consumer])
        try:
            r = compute_pb2_grpc.ComputeServiceStub(channel).Ask(
                compute_pb2.ComputeRequest(agreement_id=agreement_id, question=question),
                timeout=60,
            )
        except grpc.RpcError as err:
            return Answered(state=rpc_code(err), answer={}, receipt={}, detail=err.details() or "")
        finally:
            channel.close()
        receipt = json.loads(jws.payload_bytes(r.receipt, "computation receipt"))
        return Answered(state="answered", answer=json.loads(r.answer), receipt=receipt)

    def holding(self, consumer: str, transfer_id: str) -> bytes:
        """The bytes of a kept holding."""
        return b"".join(
            c.data
            for c in self.admin(consumer).ReadHolding(
                admin_pb2.ReadHoldingRequest(transfer_id=transfer_id), timeout=30
            )
        )

    def holdings(self, consumer: str) -> list[str]:
        """Transfer ids of the consumer's kept holdings."""
        resp = self.admin(consumer).ListTransfers(
            admin_pb2.ListTransfersRequest(holdings=True), timeout=10
        )
        return [t.transfer_id for t in resp.transfers]

    def subscribe(self, consumer: str, agreement_id: str) -> Following:
        """Follow a stream under an agreement, as ``tds subscribe``."""
        return Following(self.space, consumer, agreement_id)

    def stream_holding(self, consumer: str, agreement_id: str) -> stream_pb2.StreamHolding:
        """A stream the consumer receives, as ``tds data list`` shows it."""
        streams = (
            stream_pb2_grpc.StreamServiceStub(self._channel(consumer))
            .ListStreams(stream_pb2.ListStreamsRequest(), timeout=10)
            .streams
        )
        found = [h for h in streams if h.agreement_id == agreement_id]
        return found[0] if found else stream_pb2.StreamHolding(agreement_id=agreement_id)

    def stream_records(self, consumer: str, agreement_id: str) -> list[dict[str, Any]]:
        """What a consumer keeps of a stream: ``{"sequence", "record"}`` lines of its
        committed segments (one per countersigned window), in order."""
        holding = self.stream_holding(consumer, agreement_id)
        if not holding.path or holding.deleted:
            return []
        return [
            json.loads(line)
            for segment in sorted(Path(holding.path).glob("0*.jsonl"))
            for line in segment.read_text(encoding="utf-8").splitlines()
        ]

    def log_entries(self, participant: str, kind: str) -> list[dict[str, Any]]:
        """Entries of one kind in a participant's audit log."""
        log = self.space.nodes[participant].log
        assert log is not None
        found = (json.loads(body) for _, body in log.entries(0, log.size))
        return [e for e in found if e.get("kind") == kind]

    def sweep_until_deleted(self, consumer: str, transfer_id: str, timeout: float = 10.0) -> str:
        """Run the consumer's holdings sweeper (as its background thread does) until the
        holding is deleted; the logged reason, or "kept"."""
        node = self.space.nodes[consumer]
        assert node.sweeper is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for tid, reason in node.sweeper.sweep():
                if tid == transfer_id:
                    return reason
            logged = [
                e
                for e in self.log_entries(consumer, "holding.deleted")
                if e["data"]["transfer"] == transfer_id
            ]
            if logged:
                return str(logged[0]["data"]["reason"])
            time.sleep(0.1)
        return "kept"
