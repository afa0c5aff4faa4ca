"""The transfer process's half of the DSP binding, wired: its endpoints' shared parts and
the outbox's transfer messages (``TRANSFER_METHOD``), sent to the peer's callback.

What goes out through the outbox, each queued in the transaction of the transition that
owes it: the provider's ``TransferStartMessage`` with the data address (at the start, and
again when the provider resumes a process it suspended), a ``TransferSuspensionMessage``
(either side's admin suspends), the consumer's ``TransferStartMessage`` without a data
address (it resumes a process it suspended), and the provider's
``TransferTerminationMessage`` when the transfer under a process ends on the provider's
side — its admin stops it, the agreement is revoked (:meth:`DspTransfers.agreement_revoked`,
the negotiator's hook), or a pull finds it must stop (consent withdrawn, the consumer
revoked…; :meth:`DspTransfers.transfer_ended`, the transfer provider's hook). Like every
DSP message this connector sends, it is schema-checked, POSTed with the space certificate
and membership token, only to an https address on the host the operator registered for
the peer (checked again before each send; no redirects). A suspension or resumption
whose process has moved on before it went out is not sent (the later message says what
holds). If the consumer's callback never takes the start message, the outbox gives up and
the transfer is terminated (logged), so no data address is left open that nobody was
told of.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from connector.clock import Clock
from connector.dsp.delivery import DspSender, send_checked
from connector.dsp.negotiation import check_callback
from connector.dsp.server import Exchange
from connector.dsp.transfer import TransferSide, paused_entry, shown_state, transfer_routes
from connector.dsp.transfer_consumer import DspTransferConsumer
from connector.dsp.transfers import (
    FINAL,
    REQUESTED,
    STARTED,
    SUSPENDED,
    TERMINATED,
    TRANSFER_METHOD,
    DataTokens,
    DspTransfer,
    DspTransferStore,
    data_path,
    start_message,
    suspension_message,
    termination_message,
)
from connector.errors import ConnectorError, NotFound, PreconditionFailed, Unavailable
from connector.negotiation.dsp import process_id
from connector.negotiation.outbox import Pending
from connector.negotiation.service import PermanentRefusal
from connector.negotiation.store import NegotiationStore
from connector.store.database import Database
from connector.transfer.consumer import TransferConsumer
from connector.transfer.provider import TransferProvider, manifest_of
from connector.transfer.store import ACTIVE, PROVIDER, Transfer, TransferStore

__all__ = ["TOKEN_SECONDS", "DspTransfers"]

log = logging.getLogger(__name__)

TOKEN_SECONDS = 3600
"""How long a data address's token is valid (the pull and its resumes must fit)."""


class DspTransfers:
    """The transfer process over DSP on one connector, both roles."""

    def __init__(
        self,
        *,
        db: Database,
        provider: TransferProvider,
        receiver: TransferConsumer,
        signing_key: Ed25519PrivateKey,
        clock: Clock,
        hand_over: Callable[[list[Pending]], None],
        registered_host: Callable[[str], str],
        token_seconds: int = TOKEN_SECONDS,
    ) -> None:
        self._registered_host = registered_host
        self._sender: DspSender | None = None
        self._base_url: Callable[[], str] = lambda: ""
        self.consumer: DspTransferConsumer | None = None
        self.side = TransferSide(
            provider=provider,
            transfers=TransferStore(db),
            store=DspTransferStore(db, hand_over),
            tokens=DataTokens.from_signing_key(signing_key),
            negotiations=NegotiationStore(db),
            clock=clock,
            token_seconds=token_seconds,
            audit=provider.audit,
            consumer=lambda: self.consumer,
        )
        self._receiver = receiver

    def routes(self, exchange: Exchange) -> list[Any]:
        """The endpoints, for ``DspBinding(routes=…)``."""
        return transfer_routes(self.side)(exchange)

    def connect(self, sender: DspSender, base_url: Callable[[], str]) -> None:
        """Once the binding serves: how to send, and where this connector is reached."""
        self._sender = sender
        self._base_url = base_url
        self.consumer = DspTransferConsumer(
            side=self.side,
            receiver=self._receiver,
            sender=sender,
            callback=base_url,
            registered_host=self._registered_host,
        )

    # -- the outbox's transfer messages ---------------------------------------------------

    def deliver(self, pending: Pending) -> bool:
        """Send one transfer message (``False``: the outbox settles it)."""
        if self._sender is None:
            raise Unavailable("the DSP binding is not serving yet")
        method = pending.method.removeprefix(TRANSFER_METHOD)
        if method not in _PATHS:
            raise PermanentRefusal(f"the Dataspace Protocol has no transfer message {method}")
        payload = json.loads(pending.payload)
        transfer_id = str(payload["transfer"])
        row = self.side.store.get(transfer_id)
        try:
            check_callback(row.callback, row.counterparty, self._registered_host)
        except Unavailable:
            raise  # the registry could not be asked: the outbox tries again later
        except ConnectorError as exc:
            raise PermanentRefusal(f"not sent to {row.callback!r}: {exc}") from None
        provider_pid, consumer_pid = (
            (row.transfer_id, row.peer_pid)
            if row.role == PROVIDER
            else (row.peer_pid, row.transfer_id)
        )
        reason = [str(payload["reason"])] if payload.get("reason") else []
        state = shown_state(self.side, row)
        message: dict[str, object]
        if method == "Start":  # the provider's, with the data address
            if row.role != PROVIDER:
                raise PermanentRefusal("a consumer resumes with a start message of its own")
            if state not in (STARTED, SUSPENDED):
                return False  # ended meanwhile: its data address is of no use to anyone
            if state == SUSPENDED and payload.get("resume"):
                return False  # suspended again before the resumption went out
            t = self.side.transfers.get(transfer_id)
            message = start_message(
                transfer_id,
                row.peer_pid,
                endpoint=self._base_url() + data_path(transfer_id),
                token=self.side.tokens.issue(transfer_id, row.counterparty, row.token_expires_ms),
                expires_ms=row.token_expires_ms,
                manifest=json_format.MessageToDict(
                    manifest_of(t), preserving_proto_field_name=True
                ),
            )
        elif method == "Resume":  # the consumer's start message: no data address
            if state != STARTED:
                return False
            message = start_message(provider_pid, consumer_pid)
        elif method == "Suspension":
            if state != SUSPENDED:
                return False  # resumed (or ended) before it went out
            message = suspension_message(provider_pid, consumer_pid, reason)
        else:
            message = termination_message(
                provider_pid, consumer_pid, reason, code=str(payload.get("code") or "")
            )
        url = f"{row.callback}/transfers/{process_id(row.peer_pid)}/{_PATHS[method]}"
        send_checked(self._sender, url, row.counterparty, message)
        return False

    def give_up(self, pending: Pending, reason: str) -> None:
        """The peer's callback never took a message. The start message: end the transfer
        here (nobody was told of its data address). Others: logged (the process here is
        as this side set it; the peer's may differ until it asks, ``GET``)."""
        if pending.method != TRANSFER_METHOD + "Start":
            log.warning(
                "a DSP transfer message was not taken",
                extra={"method": pending.method, "reason": reason[:300]},
            )
            return
        with contextlib.suppress(NotFound, ValueError, KeyError):
            transfer_id = str(json.loads(pending.payload)["transfer"])
            row = self.side.store.get(transfer_id)
            why = f"the consumer's callback did not take the start message: {reason}"[:400]
            # The process first: ending the transfer tells the consumer otherwise.
            with contextlib.suppress(PreconditionFailed):
                self.side.store.move(
                    transfer_id,
                    expect=frozenset({REQUESTED, STARTED, SUSPENDED}),
                    now_ms=self.side.now_ms(),
                    state=TERMINATED,
                )
            if row.role == PROVIDER and self.side.transfers.get(transfer_id).state in ACTIVE:
                with contextlib.suppress(PreconditionFailed):
                    self.side.provider.terminate(transfer_id, why)

    # -- the provider's side ends a transfer ------------------------------------------------

    def transfer_ended(self, t: Transfer, reason: str) -> None:
        """The transfer provider's hook: a transfer it provides ended here (its admin, a
        revocation, a stop found by a pull, a failure). If it ran over DSP and its process
        is still open, the process is TERMINATED and the consumer told, through the outbox;
        its data address is refused from now on (the process is no longer STARTED)."""
        if t.role != PROVIDER:
            return
        try:
            row = self.side.store.get(t.id)
        except NotFound:
            return  # a gRPC transfer
        if row.role != PROVIDER or row.state in FINAL:
            return  # ended by the consumer's message (the process moved first), or done
        n = self.side.negotiations.by_agreement(t.agreement_id)
        code = reason.split(":", 1)[0] if reason.split(":", 1)[0].isidentifier() else ""
        with contextlib.suppress(PreconditionFailed):
            self.side.store.move(
                t.id,
                expect=frozenset({REQUESTED, STARTED, SUSPENDED}),
                now_ms=self.side.now_ms(),
                state=TERMINATED,
                queue=[
                    (
                        f"dsp-terminate-{t.id}",
                        n.pid,
                        TRANSFER_METHOD + "Termination",
                        {"transfer": t.id, "reason": reason[:300], "code": code},
                    )
                ],
            )

    def agreement_revoked(self, agreement_id: str, reason: str) -> None:
        """The negotiator's hook: the provider revoked an agreement. Every open process
        under it ends now (not at the next pull's check): its transfer is terminated,
        which ends the process and tells the consumer (:meth:`transfer_ended`)."""
        why = f"agreement_revoked: {reason or 'revoked by the provider'}"
        for row in self.side.store.open_under(agreement_id):
            t = self.side.transfers.get(row.transfer_id)
            if t.state in ACTIVE:
                with contextlib.suppress(PreconditionFailed):
                    t = self.side.provider.terminate(row.transfer_id, why)
            self.transfer_ended(t, why)  # if the transfer had ended before, without a word

    # -- either side's admin: suspend and resume ----------------------------------------

    def _process(self, transfer_id: str) -> tuple[Transfer, DspTransfer, str]:
        """A transfer of either role, its process and the negotiation its messages go with."""
        t = self.side.transfers.get(transfer_id)
        try:
            row = self.side.store.of_transfer(t.id, t.counterparty, t.role)
        except NotFound:
            raise PreconditionFailed(
                f"transfer {t.id} was not run over the Dataspace Protocol: only a DSP "
                "transfer process can be suspended (end this one with tds data stop)"
            ) from None
        return t, row, self.side.negotiations.by_agreement(t.agreement_id).pid

    def suspend(self, transfer_id: str, reason: str) -> DspTransfer:
        """Suspend a STARTED process (``#transfer-suspension-message``): its data address is
        refused from now on, on the provider's side, and the peer is told."""
        _, row, npid = self._process(transfer_id)
        state = shown_state(self.side, row)
        if state != STARTED:
            raise PreconditionFailed(
                f"the transfer process is {state}: only a STARTED one can be suspended"
            )
        return self.side.store.move(
            row.transfer_id,
            expect=frozenset({STARTED}),
            now_ms=self.side.now_ms(),
            state=SUSPENDED,
            suspended_by=row.role,
            log=paused_entry(
                self.side, row, suspended=True, by=row.role, reason=reason or "suspended"
            ),
            queue=[
                (
                    f"dsp-suspend-{uuid.uuid4().hex}",
                    npid,
                    TRANSFER_METHOD + "Suspension",
                    {
                        "transfer": row.transfer_id,
                        "reason": reason or f"suspended by the {row.role}",
                    },
                )
            ],
        )

    def resume(self, transfer_id: str) -> DspTransfer:
        """Resume a process this side suspended (``#transfer-start-message``): the
        provider's start message carries the data address again; the consumer's none."""
        _, row, npid = self._process(transfer_id)
        state = shown_state(self.side, row)
        if state != SUSPENDED:
            raise PreconditionFailed(
                f"the transfer process is {state}: only a SUSPENDED one can be resumed"
            )
        if row.suspended_by != row.role:
            raise PreconditionFailed(
                f"the {row.suspended_by or 'peer'} suspended transfer {transfer_id}: "
                "only the side that suspended a process resumes it"
            )
        method = "Start" if row.role == PROVIDER else "Resume"
        return self.side.store.move(
            row.transfer_id,
            expect=frozenset({SUSPENDED}),
            now_ms=self.side.now_ms(),
            state=STARTED,
            suspended_by="",
            log=paused_entry(self.side, row, suspended=False, by=row.role),
            queue=[
                (
                    f"dsp-resume-{uuid.uuid4().hex}",
                    npid,
                    TRANSFER_METHOD + method,
                    {"transfer": row.transfer_id, "resume": True},
                )
            ],
        )


_PATHS = {
    "Start": "start",
    "Resume": "start",
    "Suspension": "suspension",
    "Termination": "termination",
}
