"""The outbox's Dataspace Protocol half: negotiation messages to a peer's DSP binding.

A negotiation started over DSP (``Negotiation.peer_address`` set) queues the same
messages as one over gRPC, with their method marked ``dsp:`` (connector.negotiation.
negotiator.DSP_METHOD); the outbox hands those here instead of to gRPC's ``Delivery``, with
the same retries, backoff and giving up. Each is rendered as its DSP message, checked
against its schema, and POSTed to the peer's address with this connector's space
certificate and membership token; the peer's server certificate must be the space's
certificate of the participant the message is for.

No server-side request goes to a URL a peer merely names: the address must be https on
the host the operator registered for that participant (checked when a request brings a
callback address, and again before every send, against the directory in force), and
redirects are not followed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from connector._proto.tds.v1 import negotiation_pb2
from connector.dsp.jsonld import check_outgoing, read_message
from connector.dsp.negotiation import check_callback, local_pid
from connector.errors import ConnectorError, Unavailable
from connector.identity.names import participant_dns_name
from connector.negotiation.agreement import parse_agreement
from connector.negotiation.dsp import (
    agreement_message,
    contract_request_message,
    event_message,
    offer_message,
    process_id,
    termination_message,
    verification_message,
)
from connector.negotiation.negotiator import DSP_METHOD, Negotiator
from connector.negotiation.outbox import Pending
from connector.negotiation.service import PermanentRefusal
from connector.negotiation.states import State
from connector.negotiation.store import PROVIDER
from connector.rpc.channel import TlsIdentity

__all__ = ["DspDelivery", "DspSender", "send_checked"]

log = logging.getLogger(__name__)

# Refusals no retry changes (as gRPC's INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND).
_PERMANENT_STATUSES = frozenset({400, 403, 404, 413})
_MAX_ANSWER_BYTES = 256 * 1024
# A ContractNegotiation carries no reason: what a TERMINATED answer to each message means.
_REFUSED = {
    "RequestContract": "the provider refused the request at once",
    "Accept": "the provider ended the negotiation when its offer was accepted",
}


class DspSender:
    """POSTs DSP messages over mutual TLS, keeping connections open between messages (a
    TLS handshake per message would cost more than the message), on an event loop thread
    of its own so the outbox's worker threads can wait for each answer."""

    def __init__(
        self, *, identity: TlsIdentity, space: str, token: Callable[[], str], timeout: float = 15
    ) -> None:
        self._identity = identity
        self._space = space
        self._token = token
        self._timeout = timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def space(self) -> str:
        """The space whose certificates the peers' servers must present."""
        return self._space

    def tls(self) -> ssl.SSLContext:
        """Client TLS with this connector's space certificate (for other requests to a
        peer's binding: the transfer's data address)."""
        return self._tls()

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self._identity.ca_pem.decode())
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory() as tmp:  # ssl loads a chain only from files
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert.write_bytes(self._identity.cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(self._identity.key_pem)
            context.load_cert_chain(str(cert), str(key))
        return context

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="tds-dsp-client", daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    async def _call(
        self, method: str, url: str, server_name: str, document: dict[str, Any] | None, token: str
    ) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls()),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        headers = {"Authorization": f"Bearer {token}"}
        if document is not None:
            headers["Content-Type"] = "application/json"
        async with self._session.request(
            method,
            url,
            data=json.dumps(document).encode() if document is not None else None,
            headers=headers,
            server_hostname=server_name,
            allow_redirects=False,  # a peer cannot send this connector elsewhere
        ) as response:
            raw = await response.content.read(_MAX_ANSWER_BYTES + 1)
            if len(raw) > _MAX_ANSWER_BYTES:
                return response.status, None
            try:
                return response.status, json.loads(raw) if raw else None
            except ValueError:
                return response.status, None

    def post(self, url: str, peer: str, document: dict[str, Any]) -> tuple[int, Any]:
        """The status and JSON body (None if none) of POSTing ``document`` to ``peer``'s
        binding at ``url``; ``Unavailable`` when it cannot be reached."""
        return self._send("POST", url, peer, document)

    def get(self, url: str, peer: str) -> tuple[int, Any]:
        """The status and JSON body of a ``GET`` of ``peer``'s binding at ``url`` (a
        process's state); ``Unavailable`` when it cannot be reached."""
        return self._send("GET", url, peer, None)

    def _send(
        self, method: str, url: str, peer: str, document: dict[str, Any] | None
    ) -> tuple[int, Any]:
        token = self._token()  # the registry client's, refreshed before it expires
        server_name = participant_dns_name(self._space, peer)
        future = asyncio.run_coroutine_threadsafe(
            self._call(method, url, server_name, document, token), self._running_loop()
        )
        try:
            return future.result(timeout=self._timeout + 5)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            future.cancel()
            reason = str(exc) or type(exc).__name__
            raise Unavailable(f"{peer}'s DSP binding at {url}: {reason}") from None

    def close(self) -> None:
        """Close the connections and stop the loop; idempotent."""
        with self._lock:
            loop, thread, session = self._loop, self._thread, self._session
            self._loop = self._thread = self._session = None
        if loop is None:
            return
        if session is not None:

            async def closed() -> None:
                await session.close()
                # aiohttp's advice for TLS: give the transports a moment to close before
                # the loop stops, or their sockets are left open.
                await asyncio.sleep(0.25)

            asyncio.run_coroutine_threadsafe(closed(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()


def send_checked(sender: DspSender, url: str, peer: str, message: dict[str, Any]) -> Any:
    """POST a DSP message, checked against its schema first; the answer's JSON body, or
    ``PermanentRefusal`` (a refusal no retry changes) or ``Unavailable`` (retry)."""
    check_outgoing(str(message["@type"]), message)
    status, body = sender.post(url, peer, message)
    if 200 <= status < 300:
        return body
    reasons = body.get("reason") if isinstance(body, dict) else None
    reason = f"{peer} answered {status}: {reasons or 'no DSP error body'}"[:1000]
    if status in _PERMANENT_STATUSES:
        raise PermanentRefusal(reason)
    raise Unavailable(reason)


class DspDelivery:
    """Delivers ``dsp:`` outbox messages (see the module's docstring)."""

    def __init__(
        self,
        *,
        negotiator: Callable[[], Negotiator],
        sender: DspSender,
        callback: Callable[[], str],
        registered_host: Callable[[str], str],
        space: str,
    ) -> None:
        """``callback``: this connector's binding URL, the ``callbackAddress`` it sends."""
        self._negotiator = negotiator
        self._sender = sender
        self._callback = callback
        self._registered_host = registered_host
        self._space = space

    def _peer(self, pid: str) -> tuple[str, str]:
        """The peer address and our role of negotiation ``pid``: fixed when it was created,
        so kept by the store from then (``NegotiationStore.peer``), not read before every
        message."""
        address, role = self._negotiator().peer(pid)
        return (address or "").rstrip("/"), role

    def __call__(self, pending: Pending) -> bool:
        """Deliver one message; ``True`` when taking the answer marked it delivered."""
        method = pending.method.removeprefix(DSP_METHOD)
        negotiator = self._negotiator()
        address, role = self._peer(pending.negotiation_pid)
        try:
            check_callback(address, pending.target, self._registered_host)
        except Unavailable:
            raise  # the registry could not be asked: the outbox tries again later
        except ConnectorError as exc:
            raise PermanentRefusal(f"not sent to {address!r}: {exc}") from None
        if method in ("RequestContract", "Accept"):
            url, message = self._consumer_message(method, pending, address)
            answer = self._send(url, pending.target, message)
            ack = self._state_of(answer, pending.negotiation_pid, _REFUSED[method])
            if ack is None:
                raise PermanentRefusal("the provider did not answer with a ContractNegotiation")
            if ack.state == State.AGREED.value:
                # A DSP answer carries no agreement: the provider pushes it to our callback,
                # and taking it stores the provider's process id. Taking this answer too was
                # a read and a commit racing that one for the row (the loser retrying after
                # 10 ms) on every negotiation; the outbox marks the request delivered with
                # its next write.
                return False
            # A TERMINATED answer ends it here; one still REQUESTED (waiting for the
            # provider's approval) gives the provider's process id.
            return negotiator.request_answered(
                pending.negotiation_pid, pending.target, ack, delivered=pending.id
            )
        if method == "VerifyAgreement":
            verified = negotiation_pb2.AgreementMessage.FromString(pending.payload)
            message = verification_message(
                verified.provider_pid, verified.consumer_pid, verified.agreement
            )
            path = f"/negotiations/{process_id(verified.provider_pid)}/agreement/verification"
            answer = self._send(address + path, pending.target, message)
            # The specification leaves this answer's body open; a tds provider answers with
            # the negotiation, FINALIZED, which saves waiting for the event that follows.
            ack = self._state_of(answer, pending.negotiation_pid)
            if ack is not None and ack.state == State.FINALIZED.value:
                return negotiator.verification_answered(
                    pending.negotiation_pid, pending.target, ack, delivered=pending.id
                )
            return False
        self._send(*self._provider_message(method, pending, role, address))
        return False

    def _consumer_message(
        self, method: str, pending: Pending, address: str
    ) -> tuple[str, dict[str, Any]]:
        """URL and message of a request (first or counter) or an acceptance."""
        if method == "Accept":
            event = negotiation_pb2.NegotiationEvent.FromString(pending.payload)
            message = event_message(event.provider_pid, event.consumer_pid, event.state)
            return f"{address}/negotiations/{process_id(event.provider_pid)}/events", message
        request = negotiation_pb2.ContractRequest.FromString(pending.payload)
        message = contract_request_message(
            consumer_pid=request.consumer_pid,
            product=request.product_id,
            offer=request.offer_id,
            purpose=request.purpose,
            callback=self._callback(),
            provider_pid=request.provider_pid,
        )
        if request.provider_pid:  # a counter-request (#negotiations-providerpid-request-post)
            return f"{address}/negotiations/{process_id(request.provider_pid)}/request", message
        return address + "/negotiations/request", message

    def _provider_message(
        self, method: str, pending: Pending, role: str, address: str
    ) -> tuple[str, str, dict[str, Any]]:
        """URL, peer and message of what needs no answer taken: an offer, the agreement,
        the FINALIZED event, a termination."""
        if method == "SendOffer":
            offered = negotiation_pb2.ContractOffer.FromString(pending.payload)
            message = offer_message(
                provider_pid=offered.provider_pid,
                consumer_pid=offered.consumer_pid,
                product=offered.product_id,
                offer=offered.offer_id,
                purpose=offered.purpose,
                terms=self._negotiator().published_offer(offered.product_id, offered.offer_id),
            )
            path = f"/negotiations/{process_id(offered.consumer_pid)}/offers"
        elif method == "SendAgreement":
            sent = negotiation_pb2.AgreementMessage.FromString(pending.payload)
            message = agreement_message(
                parse_agreement(sent.agreement), space=self._space, signed=sent.agreement
            )
            path = f"/negotiations/{process_id(sent.consumer_pid)}/agreement"
        elif method == "Finalize":
            event = negotiation_pb2.NegotiationEvent.FromString(pending.payload)
            message = event_message(event.provider_pid, event.consumer_pid, event.state)
            path = f"/negotiations/{process_id(event.consumer_pid)}/events"
        elif method == "Terminate":
            ended = negotiation_pb2.NegotiationTermination.FromString(pending.payload)
            theirs = ended.consumer_pid if role == PROVIDER else ended.provider_pid
            if not theirs or theirs.startswith("pending:"):
                raise PermanentRefusal("the provider's process id is not known: nothing to address")
            message = termination_message(
                ended.provider_pid, ended.consumer_pid, list(ended.reasons)
            )
            path = f"/negotiations/{process_id(theirs)}/termination"
        else:
            raise PermanentRefusal(f"the Dataspace Protocol has no message for {method}")
        return address + path, pending.target, message

    def _send(self, url: str, peer: str, message: dict[str, Any]) -> Any:
        return send_checked(self._sender, url, peer, message)

    @property
    def sender(self) -> DspSender:
        """The connections this delivery posts over (shared with the transfer messages)."""
        return self._sender

    def close(self) -> None:
        """Close the sender's connections."""
        self._sender.close()

    @staticmethod
    def _state_of(
        answer: Any, pid: str, refused: str = ""
    ) -> negotiation_pb2.NegotiationAck | None:
        """The provider's ``ContractNegotiation`` about our negotiation ``pid``, as the ack
        gRPC would have given."""
        try:
            shown = read_message(answer, "ContractNegotiation")
            if local_pid(str(shown["consumerPid"])) != pid:
                return None
            provider_pid = local_pid(str(shown["providerPid"]))
        except ConnectorError:  # not a negotiation of ours, or a process id refused
            return None
        state = str(shown["state"])
        # A ContractNegotiation carries no reason: say where the refusal came from.
        reasons = [refused or _REFUSED["RequestContract"]] if state == "TERMINATED" else []
        return negotiation_pb2.NegotiationAck(pid=provider_pid, state=state, reasons=reasons)
