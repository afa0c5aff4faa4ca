"""``TransferService`` between connectors: the provider's and the consumer's endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from connector._proto.tds.v1 import transfer_pb2, transfer_pb2_grpc
from connector.rpc.auth import Access, current_caller
from connector.rpc.server import Service
from connector.transfer.consumer import TransferConsumer
from connector.transfer.provider import TransferProvider
from connector.transfer.wire import add_transfer_service

__all__ = ["TransferServicer", "transfer_service"]


class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    """Serves both roles: this connector provides some transfers and receives others."""

    def __init__(self, provider: TransferProvider, consumer: TransferConsumer) -> None:
        self._provider = provider
        self._consumer = consumer

    def StartTransfer(
        self, request: transfer_pb2.StartTransferRequest, context: Any
    ) -> transfer_pb2.TransferManifest:
        """Consumer → provider."""
        return self._provider.start(current_caller(), request.agreement_id, request.push)

    def Pull(  # type: ignore[override]  # encoded chunks, sent as they are
        self, request: transfer_pb2.PullRequest, context: Any
    ) -> Iterator[bytes]:
        """Consumer → provider (chunks encoded: ``connector.transfer.wire``)."""
        yield from self._provider.pull(current_caller(), request.transfer_id, request.offset)

    def RequestPush(self, request: transfer_pb2.PullRequest, context: Any) -> transfer_pb2.PushAck:
        """Consumer → provider."""
        return self._provider.push(current_caller(), request.transfer_id, request.offset)

    def Push(
        self, request_iterator: Iterator[transfer_pb2.Chunk], context: Any
    ) -> transfer_pb2.PushAck:
        """Provider → consumer."""
        return self._consumer.receive_push(current_caller(), request_iterator)

    def CompleteTransfer(
        self, request: transfer_pb2.CompleteTransferRequest, context: Any
    ) -> transfer_pb2.CompleteTransferResponse:
        """Consumer → provider."""
        receipt = self._provider.complete(current_caller(), request.transfer_id, request.receipt)
        return transfer_pb2.CompleteTransferResponse(receipt=receipt)

    def TerminateTransfer(
        self, request: transfer_pb2.TerminateTransferRequest, context: Any
    ) -> transfer_pb2.TerminateTransferResponse:
        """Consumer → provider."""
        t = self._provider.terminate(request.transfer_id, request.reason, current_caller())
        return transfer_pb2.TerminateTransferResponse(transfer_id=t.id, state=t.state)


def transfer_service(servicer: TransferServicer) -> Service:
    """``TransferService`` with its access table (members only)."""
    methods = (
        "StartTransfer",
        "Pull",
        "RequestPush",
        "Push",
        "CompleteTransfer",
        "TerminateTransfer",
    )
    return Service(
        "tds.v1.TransferService",
        add_transfer_service,  # Pull's chunks go out as the provider encoded them
        servicer,
        dict.fromkeys(methods, Access.MEMBER),
    )
