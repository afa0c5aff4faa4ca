"""The participant admin's transfer operations (``AdminService`` methods)."""

from __future__ import annotations

import builtins
import json
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from connector._proto.tds.v1 import admin_pb2
from connector.catalog.paging import Listed
from connector.errors import ConnectorError, InvalidRequest, PreconditionFailed
from connector.transfer.activity import transfer_activity
from connector.transfer.consumer import Progress, ProgressSink, TransferConsumer
from connector.transfer.provider import TransferProvider
from connector.transfer.store import CONSUMER, PROVIDER, Metering, Transfer, TransferStore

__all__ = ["DspControl", "DspRunner", "TransferAdmin", "transfer_info"]

_EXPORT_CHUNK = 1024 * 1024


def transfer_info(t: Transfer) -> admin_pb2.TransferInfo:
    """The admin's view of a transfer."""
    return admin_pb2.TransferInfo(
        transfer_id=t.id,
        role=t.role,
        agreement_id=t.agreement_id,
        product_id=t.product,
        counterparty=t.counterparty,
        state="deleted" if t.deleted_ms else t.state,
        size=t.size,
        sha256=t.sha256,
        received=t.received,
        push=t.push,
        obligations_json=json.dumps(dict(t.obligations), sort_keys=True),
        reason=t.reason,
        started_ms=t.started_ms,
        ended_ms=t.ended_ms,
        receipt=t.receipt or "",
        deleted_ms=t.deleted_ms,
        fields=list(t.fields or ()),
        format=t.format,
    )


def _progress(p: Progress) -> admin_pb2.TransferProgress:
    final = p.event in ("completed", "failed")
    return admin_pb2.TransferProgress(
        event=p.event,
        transfer_id=p.transfer.id,
        size=p.transfer.size,
        received=p.received,
        sha256=p.transfer.sha256,
        receipt_id=p.receipt_id,
        detail=p.detail,
        transfer=transfer_info(p.transfer) if final else None,
    )


class DspRunner(Protocol):
    """Runs a transfer over the DSP binding (connector.dsp.transfer_consumer)."""

    def run(self, agreement_id: str, provider_url: str, progress: ProgressSink) -> Transfer:
        """Request, pull and complete; the completed transfer."""
        ...

    def runs(self, transfer_id: str) -> bool:
        """Whether ``transfer_id`` is a transfer this connector receives over the binding."""
        ...

    def resume(self, transfer_id: str, progress: ProgressSink) -> Transfer:
        """Pull the rest of an unfinished transfer and complete it."""
        ...


class DspControl(Protocol):
    """Suspends and resumes transfer processes run over the DSP binding
    (connector.dsp.transfer_delivery)."""

    def suspend(self, transfer_id: str, reason: str) -> object:
        """Suspend a STARTED process (the peer is told)."""
        ...

    def resume(self, transfer_id: str) -> object:
        """Resume a process this side suspended (the peer is told)."""
        ...


class TransferAdmin:
    """Runs receiving jobs for the admin and answers questions about transfers."""

    def __init__(
        self,
        store: TransferStore,
        provider: TransferProvider,
        consumer: TransferConsumer,
        dsp: Callable[[], DspRunner | None] = lambda: None,
        control: Callable[[], DspControl | None] = lambda: None,
    ) -> None:
        """``dsp``: this connector as a DSP consumer, when it serves a binding;
        ``control``: its transfer processes over the binding (suspend, resume)."""
        self._dsp = dsp
        self._control = control
        self._store = store
        self._provider = provider
        self._consumer = consumer

    def transfer(self, request: admin_pb2.TransferRequest) -> Iterator[admin_pb2.TransferProgress]:
        """Receive under an agreement; stream progress. The job outlives a dropped caller."""
        if not request.agreement_id and not request.transfer_id:
            raise InvalidRequest("name an agreement_id (or a transfer_id to resume)")
        events: queue.Queue[Progress | ConnectorError | None] = queue.Queue()

        runner = self._dsp() if request.dsp_url or request.transfer_id else None
        # A transfer run over the Dataspace Protocol resumes over it (by its id alone).
        dsp_resume = bool(
            request.transfer_id and runner is not None and runner.runs(request.transfer_id)
        )
        if request.transfer_id and not request.dsp_url and not dsp_resume:
            runner = None
        if request.dsp_url:
            if runner is None:
                raise PreconditionFailed(
                    "a transfer over the Dataspace Protocol needs this connector's own [dsp] "
                    "binding (dsp.listen): the provider's start message arrives there"
                )
            if request.push or request.transfer_id or not request.agreement_id:
                raise InvalidRequest(
                    "over the Dataspace Protocol, name an agreement_id; the data is pulled "
                    "(HttpData-PULL): no push (to resume a transfer, give its id alone)"
                )

        def job() -> None:
            try:
                if runner is not None and dsp_resume:
                    runner.resume(request.transfer_id, events.put)
                elif runner is not None:
                    runner.run(request.agreement_id, request.dsp_url, events.put)
                else:
                    self._consumer.run(
                        request.agreement_id,
                        push=request.push,
                        transfer_id=request.transfer_id,
                        progress=events.put,
                    )
            except ConnectorError as exc:
                events.put(exc)
            finally:
                events.put(None)

        threading.Thread(target=job, name="tds-transfer", daemon=True).start()
        failure: ConnectorError | None = None
        while (item := events.get()) is not None:
            if isinstance(item, ConnectorError):
                failure = item
                continue
            if item.event != "failed":  # the failure itself travels as the call's status
                yield _progress(item)
        if failure is not None:
            raise failure

    def list(self, request: admin_pb2.ListTransfersRequest) -> admin_pb2.ListTransfersResponse:
        """Transfers of one role, or the holdings."""
        found = self._store.list(_role(request), holdings=request.holdings)
        return admin_pb2.ListTransfersResponse(transfers=[transfer_info(t) for t in found])

    def page(
        self, request: admin_pb2.ListTransfersRequest, after: Sequence[str], limit: int
    ) -> builtins.list[Listed[admin_pb2.TransferInfo]]:
        """Up to ``limit`` transfers as ``list`` filters them, newest first, after position
        ``after`` (started_ms and id of the last one shown; empty: from the newest)."""
        if after and (len(after) != 2 or not after[0].isdigit()):
            raise InvalidRequest("page position: expected (started_ms, transfer id)")
        found = self._store.list(
            _role(request), holdings=request.holdings, before=after, limit=limit
        )
        infos = [(t, transfer_info(t)) for t in found]
        return [Listed((str(t.started_ms), t.id), i.ByteSize(), i) for t, i in infos]

    def read(self, request: admin_pb2.ReadHoldingRequest) -> Iterator[admin_pb2.HoldingChunk]:
        """A holding's bytes."""
        for offset, data in self._consumer.read(request.transfer_id, _EXPORT_CHUNK):
            yield admin_pb2.HoldingChunk(offset=offset, data=data)

    def terminate(self, request: admin_pb2.TerminateOwnTransferRequest) -> admin_pb2.TransferInfo:
        """End a transfer of either role."""
        t = self._store.get(request.transfer_id)
        if t.role == PROVIDER:
            t = self._provider.terminate(t.id, request.reason or "terminated by the provider")
        else:
            t = self._consumer.terminate(t.id, request.reason)
        return transfer_info(t)

    def suspend(self, request: admin_pb2.TransferControlRequest) -> admin_pb2.TransferInfo:
        """Suspend a transfer run over the Dataspace Protocol (either role)."""
        self._dsp_control().suspend(request.transfer_id, request.reason)
        return self._shown(request.transfer_id, "suspended")

    def resume(self, request: admin_pb2.TransferControlRequest) -> admin_pb2.TransferInfo:
        """Resume a transfer this side suspended."""
        self._dsp_control().resume(request.transfer_id)
        return self._shown(request.transfer_id, "")

    def _dsp_control(self) -> DspControl:
        control = self._control()
        if control is None:
            raise PreconditionFailed(
                "only a transfer run over the Dataspace Protocol can be suspended, and this "
                "connector serves no DSP binding (dsp.listen)"
            )
        return control

    def _shown(self, transfer_id: str, state: str) -> admin_pb2.TransferInfo:
        info = transfer_info(self._store.get(transfer_id))
        if state:
            info.state = state  # the transfer stays started under its suspended process
        return info

    def activity(self, days: int) -> admin_pb2.TransferActivityResponse:
        """Transfers per day and the streams' recent rate (``transfer_activity``)."""
        return transfer_activity(self._store.database, days)

    def metering(self) -> admin_pb2.MeteringReportResponse:
        """Counts per agreement (the provider's), all of them."""
        return admin_pb2.MeteringReportResponse(
            agreements=[_agreement_metering(m) for m in self._store.metering()]
        )

    def metering_page(
        self, after: Sequence[str], limit: int
    ) -> builtins.list[Listed[admin_pb2.AgreementMetering]]:
        """Up to ``limit`` agreements' counts after position ``after`` (consumer and
        agreement id; empty: from the first)."""
        if after and len(after) != 2:
            raise InvalidRequest("page position: expected (consumer, agreement id)")
        found = [
            (m, _agreement_metering(m)) for m in self._store.metering(after=after, limit=limit)
        ]
        return [Listed((m.consumer, m.agreement_id), i.ByteSize(), i) for m, i in found]


def _agreement_metering(m: Metering) -> admin_pb2.AgreementMetering:
    return admin_pb2.AgreementMetering(
        agreement_id=m.agreement_id,
        consumer=m.consumer,
        product_id=m.product,
        transfers=m.transfers,
        bytes=m.bytes,
        completed=m.completed,
        completed_bytes=m.completed_bytes,
        max_transfers=m.max_transfers,
        max_bytes=m.max_bytes,
        computations=m.computations,
        epsilon_spent=m.epsilon_spent_micro / 1_000_000,
        epsilon_budget=m.epsilon_budget_micro / 1_000_000,
        messages=m.messages,
        max_messages=m.max_messages,
    )


def _role(request: admin_pb2.ListTransfersRequest) -> str:
    if request.role not in ("", PROVIDER, CONSUMER):
        raise InvalidRequest("role must be provider, consumer or empty")
    return request.role
