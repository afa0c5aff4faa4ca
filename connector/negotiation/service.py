"""``NegotiationService`` (between connectors) and the outbox's delivery to it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc

from connector._proto.tds.v1 import negotiation_pb2, negotiation_pb2_grpc
from connector.errors import (
    ConnectorError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    VerificationError,
)
from connector.negotiation.negotiator import Negotiator
from connector.negotiation.outbox import Pending
from connector.negotiation.states import FINAL
from connector.rpc.auth import Access, current_caller
from connector.rpc.channel import calling
from connector.rpc.server import Service

__all__ = ["Delivery", "NegotiationServicer", "PermanentRefusal", "negotiation_service"]

MESSAGES: dict[str, type[Any]] = {
    "RequestContract": negotiation_pb2.ContractRequest,
    "SendOffer": negotiation_pb2.ContractOffer,
    "Accept": negotiation_pb2.NegotiationEvent,
    "SendAgreement": negotiation_pb2.AgreementMessage,
    "VerifyAgreement": negotiation_pb2.AgreementMessage,
    "Finalize": negotiation_pb2.NegotiationEvent,
    "Terminate": negotiation_pb2.NegotiationTermination,
    "RevokeAgreement": negotiation_pb2.AgreementRevocation,
}
# Refusals that no retry can change: the negotiation ends with the other side's reason.
_PERMANENT = (InvalidRequest, NotFound, PermissionDenied, PreconditionFailed, VerificationError)


class PermanentRefusal(ConnectorError):
    """The other connector refused a message for good: the outbox stops retrying it."""

    permanent = True


class NegotiationServicer(negotiation_pb2_grpc.NegotiationServiceServicer):
    """Receives negotiation messages from other members."""

    def __init__(self, negotiator: Negotiator) -> None:
        self._n = negotiator

    def RequestContract(self, request: Any, context: Any) -> Any:
        """Consumer → provider."""
        return self._n.receive_request(current_caller(), request)

    def SendOffer(self, request: Any, context: Any) -> Any:
        """Provider → consumer: a counter-offer."""
        return self._n.receive_offer(current_caller(), request)

    def Accept(self, request: Any, context: Any) -> Any:
        """Consumer → provider: the provider's offer is accepted."""
        return self._n.receive_accepted(current_caller(), request)

    def SendAgreement(self, request: Any, context: Any) -> Any:
        """Provider → consumer."""
        return self._n.receive_agreement(current_caller(), request)

    def VerifyAgreement(self, request: Any, context: Any) -> Any:
        """Consumer → provider."""
        return self._n.receive_verification(current_caller(), request)

    def Finalize(self, request: Any, context: Any) -> Any:
        """Provider → consumer."""
        return self._n.receive_final(current_caller(), request)

    def Terminate(self, request: Any, context: Any) -> Any:
        """Either side."""
        return self._n.receive_termination(current_caller(), request)

    def RevokeAgreement(self, request: Any, context: Any) -> Any:
        """Provider → consumer."""
        return self._n.receive_revocation(current_caller(), request)


def negotiation_service(servicer: NegotiationServicer) -> Service:
    """``NegotiationService`` with its access table (members only)."""
    return Service(
        "tds.v1.NegotiationService",
        negotiation_pb2_grpc.add_NegotiationServiceServicer_to_server,
        servicer,
        dict.fromkeys(MESSAGES, Access.MEMBER),
    )


class Delivery:
    """Sends outbox messages to the connector the directory names for each target."""

    def __init__(
        self, negotiator: Callable[[], Negotiator], channel_to: Callable[[str], grpc.Channel]
    ) -> None:
        self._negotiator = negotiator
        self._channel_to = channel_to
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, negotiation_pb2_grpc.NegotiationServiceStub] = {}

    def _stub(self, target: str) -> negotiation_pb2_grpc.NegotiationServiceStub:
        with self._lock:
            stub = self._stubs.get(target)
            if stub is None:  # one per channel: making a stub makes a callable per method
                if target not in self._channels:
                    self._channels[target] = self._channel_to(target)
                stub = self._stubs[target] = negotiation_pb2_grpc.NegotiationServiceStub(
                    self._channels[target]
                )
            return stub

    def __call__(self, pending: Pending) -> bool:
        """Deliver one message; ``PermanentRefusal`` when the receiver refuses it for good.

        ``True`` when taking the answer also marked the message delivered.
        """
        message = MESSAGES[pending.method].FromString(pending.payload)
        try:
            with calling(pending.target):
                ack = getattr(self._stub(pending.target), pending.method)(message, timeout=15)
        except _PERMANENT as exc:
            raise PermanentRefusal(str(exc)) from None
        except ConnectorError:
            with self._lock:  # reconnect next time (address or certificate may have changed)
                channel = self._channels.pop(pending.target, None)
                self._stubs.pop(pending.target, None)
            if channel is not None:
                channel.close()
            raise
        # Answers that move the negotiation here: the provider's process id or its
        # agreement (to a request, a counter-request or an acceptance), and FINALIZED for
        # our countersignature.
        if pending.method in ("RequestContract", "Accept"):
            return self._negotiator().request_answered(
                pending.negotiation_pid, pending.target, ack, delivered=pending.id
            )
        if pending.method == "VerifyAgreement":
            return self._negotiator().verification_answered(
                pending.negotiation_pid, pending.target, ack, delivered=pending.id
            )
        return False

    def give_up(self, pending: Pending, reason: str) -> None:
        """A message could not be delivered: end the negotiation it belongs to, here."""
        negotiator = self._negotiator()
        try:
            n = negotiator.get(pending.negotiation_pid)
        except NotFound:
            return
        if n.state not in FINAL:
            negotiator.end_locally(
                n.pid, f"{pending.target} did not accept {pending.method}: {reason}"[:500]
            )

    def close(self) -> None:
        """Close every channel."""
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._stubs.clear()
