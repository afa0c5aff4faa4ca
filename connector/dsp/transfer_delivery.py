"""The transfer process's half of the DSP binding, wired: its endpoints' shared parts and
the outbox's transfer messages (``TRANSFER_METHOD``), sent to the peer's callback.

What goes out through the outbox: the provider's ``TransferStartMessage`` with the data
address (queued in the transaction that starts the process). Like every DSP message this
connector sends, it is schema-checked, POSTed with the space certificate and membership
token, only to an https address on the host the operator registered for the peer
(checked again before each send; no redirects). If the consumer's callback never takes
it, the outbox gives up and the transfer is terminated (logged), so no data address is
left open that nobody was told of.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from connector.clock import Clock
from connector.dsp.delivery import DspSender, send_checked
from connector.dsp.negotiation import check_callback
from connector.dsp.server import Exchange
from connector.dsp.transfer import TransferSide, shown_state, transfer_routes
from connector.dsp.transfer_consumer import DspTransferConsumer
from connector.dsp.transfers import (
    REQUESTED,
    STARTED,
    SUSPENDED,
    TERMINATED,
    TRANSFER_METHOD,
    DataTokens,
    DspTransferStore,
    data_path,
    start_message,
)
from connector.errors import ConnectorError, NotFound, PreconditionFailed, Unavailable
from connector.negotiation.dsp import process_id
from connector.negotiation.outbox import Pending
from connector.negotiation.service import PermanentRefusal
from connector.negotiation.store import NegotiationStore
from connector.store.database import Database
from connector.transfer.consumer import TransferConsumer
from connector.transfer.provider import TransferProvider, manifest_of
from connector.transfer.store import ACTIVE, PROVIDER, TransferStore

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
        if method != "Start":
            raise PermanentRefusal(f"the Dataspace Protocol has no transfer message {method}")
        transfer_id = str(json.loads(pending.payload)["transfer"])
        row = self.side.store.get(transfer_id)
        try:
            check_callback(row.callback, row.counterparty, self._registered_host)
        except Unavailable:
            raise  # the registry could not be asked: the outbox tries again later
        except ConnectorError as exc:
            raise PermanentRefusal(f"not sent to {row.callback!r}: {exc}") from None
        if shown_state(self.side, row) not in (STARTED, SUSPENDED):
            return False  # ended meanwhile: its data address is of no use to anyone
        t = self.side.transfers.get(transfer_id)
        message = start_message(
            transfer_id,
            row.peer_pid,
            endpoint=self._base_url() + data_path(transfer_id),
            token=self.side.tokens.issue(transfer_id, row.counterparty, row.token_expires_ms),
            expires_ms=row.token_expires_ms,
            manifest=json_format.MessageToDict(manifest_of(t), preserving_proto_field_name=True),
        )
        url = f"{row.callback}/transfers/{process_id(row.peer_pid)}/start"
        send_checked(self._sender, url, row.counterparty, message)
        return False

    def give_up(self, pending: Pending, reason: str) -> None:
        """The consumer's callback never took the start message: end the transfer here."""
        with contextlib.suppress(NotFound, ValueError, KeyError):
            transfer_id = str(json.loads(pending.payload)["transfer"])
            row = self.side.store.get(transfer_id)
            why = f"the consumer's callback did not take the start message: {reason}"[:400]
            if row.role == PROVIDER and self.side.transfers.get(transfer_id).state in ACTIVE:
                with contextlib.suppress(PreconditionFailed):
                    self.side.provider.terminate(transfer_id, why)
            with contextlib.suppress(PreconditionFailed):
                self.side.store.move(
                    transfer_id,
                    expect=frozenset({REQUESTED, STARTED, SUSPENDED}),
                    now_ms=self.side.now_ms(),
                    state=TERMINATED,
                )
