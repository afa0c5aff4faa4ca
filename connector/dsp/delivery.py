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

import http.client
import json
import logging
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


class _Connection(http.client.HTTPSConnection):
    """An HTTPS connection that checks the peer's certificate against ``server_name`` (the
    participant's name in the space) while connecting to the address's host."""

    def __init__(
        self, host: str, port: int | None, *, server_name: str, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, context=context)
        self.server_name = server_name
        self.used = False  # has carried a request (and may since have been closed by the peer)

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP (with TCP_NODELAY), then TLS:
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=self.server_name
        )


# A kept connection the peer closed meanwhile fails on first use like this; the request is
# sent again once on a new connection (a repeated DSP message changes nothing: the peer's
# inbox drops it).
# (A TLS peer that closes without close_notify shows as ssl.SSLEOFError on the next read.)
_STALE = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class DspSender:
    """POSTs DSP messages over mutual TLS, keeping connections open between messages (a
    TLS handshake per message would cost more than the message).

    Synchronous, on the calling thread (an outbox worker, an admin call waiting for the
    outcome): the answer is waited for anyway, and handing each message to an event loop
    thread and the answer back cost two thread switches a message, which on a connector
    whose threads share one interpreter lock was a visible part of each message's time.
    The standard library's ``http.client`` is the client: one connection per request in
    flight, kept in a small pool per peer; redirects are never followed (it has none)."""

    _KEEP = 8
    """Idle connections kept per peer address (one per outbox worker)."""

    def __init__(
        self, *, identity: TlsIdentity, space: str, token: Callable[[], str], timeout: float = 15
    ) -> None:
        self._identity = identity
        self._space = space
        self._token = token
        self._timeout = timeout
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, str, int | None], list[_Connection]] = {}
        self._closed = False

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

    def _connection(self, key: tuple[str, str, int | None]) -> _Connection:
        with self._lock:
            if self._closed:
                raise Unavailable("the connector is stopping")
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
            if self._context is None:
                self._context = self._tls()
            context = self._context
        return _Connection(key[1], key[2], server_name=key[0], context=context)

    def _keep(self, key: tuple[str, str, int | None], connection: _Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < self._KEEP:
                idle.append(connection)
                return
        connection.close()

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
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise Unavailable(f"{peer}'s DSP binding at {url}: not an https URL")
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            port = parts.port
        except ValueError:
            raise Unavailable(f"{peer}'s DSP binding at {url}: no valid port") from None
        key = (participant_dns_name(self._space, peer), parts.hostname, port)
        headers = {"Authorization": f"Bearer {self._token()}"}  # refreshed before it expires
        body = None
        if document is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(document).encode()
        deadline = time.monotonic() + self._timeout
        while True:
            connection = self._connection(key)
            reused = connection.used
            connection.used = True
            try:
                answer = self._exchange(connection, method, target, headers, body, deadline)
            except _STALE as exc:
                connection.close()
                if reused and time.monotonic() < deadline:
                    continue  # the peer closed it while it was kept: once more, anew
                reason = str(exc) or type(exc).__name__
                raise Unavailable(f"{peer}'s DSP binding at {url}: {reason}") from None
            except (http.client.HTTPException, TimeoutError, ssl.SSLError, OSError) as exc:
                connection.close()
                reason = str(exc) or type(exc).__name__
                raise Unavailable(f"{peer}'s DSP binding at {url}: {reason}") from None
            except BaseException:
                connection.close()
                raise
            status, raw, reusable = answer
            if reusable:
                self._keep(key, connection)
            else:
                connection.close()
            if raw is None:
                return status, None
            try:
                return status, json.loads(raw) if raw else None
            except ValueError:
                return status, None

    @staticmethod
    def _exchange(
        connection: _Connection,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        deadline: float,
    ) -> tuple[int, bytes | None, bool]:
        """One request on ``connection``: the status, the body (None past the size limit)
        and whether the connection can carry another. Every wait is bounded by what is
        left of ``deadline``."""

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer in time")
            return remaining

        connection.timeout = left()
        if connection.sock is not None:
            connection.sock.settimeout(connection.timeout)
        connection.request(method, target, body=body, headers=headers)
        if connection.sock is not None:
            connection.sock.settimeout(left())
        response = connection.getresponse()
        if connection.sock is not None:
            connection.sock.settimeout(left())
        raw = response.read(_MAX_ANSWER_BYTES + 1)  # all of it, if within the limit
        if len(raw) > _MAX_ANSWER_BYTES or not response.isclosed():
            return response.status, None, False  # the rest is not read: not reusable
        return response.status, raw, not response.will_close

    def close(self) -> None:
        """Close the kept connections; idempotent (later sends are refused)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


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
