"""DSP contract negotiation over the HTTPS binding, both roles (DSP 2025-1, contract
negotiation HTTPS binding; docstrings name the specification's anchors).

Each message is handed to the same :class:`Negotiator` that serves gRPC's
``NegotiationService``: the same store, contract policy, inbox and audit entries. A DSP
message has no message id of its own, so the inbox id of one is a digest of its sender
and its expanded-then-compacted content: the same message sent again is recognised as a
repeat and changes nothing.

Provider side: ``POST /negotiations/request``, ``GET /negotiations/{pid}``,
``/request`` (a counter-request), ``/events`` (ACCEPTED), ``/agreement/verification`` and
``/termination``. Consumer side (the ``callbackAddress`` a tds consumer sends is its
binding's base URL): ``/negotiations/{cid}/offers`` (a counter-offer),
``/agreement``, ``/events`` (FINALIZED) and ``/termination``. One path
serves both roles where the specification gives them the same one: the process id in the
path says which of this connector's negotiations, and so which role, a message is for.
What this connector sends back goes through the outbox (connector.dsp.delivery).

The agreement is tds's dual-signed document: it travels as :data:`SIGNED_AGREEMENT`
beside its ODRL rendering, the provider's signature in the agreement message, both in the
verification message. Not built: an offer that starts a negotiation
(``POST /negotiations/offers``, provider-initiated; no route, so 405 beside the GET of
``/negotiations/{pid}``): a tds negotiation always starts with the consumer's request,
since the contract policy that checks an offer decides for the consumer's subject, which
the provider learns only from the consumer's own call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import urllib.parse
from collections.abc import Callable
from typing import Any

from aiohttp import web

from connector._proto.tds.v1 import negotiation_pb2
from connector.audit.canonical import canonical_json
from connector.dsp.catalog import dataset_product_id
from connector.dsp.server import Exchange, note_pids
from connector.errors import InvalidRequest, NotFound
from connector.identifiers import PROCESS_ID
from connector.negotiation.agreement import parsed_agreement
from connector.negotiation.dsp import SIGNED_AGREEMENT, negotiation_message
from connector.negotiation.negotiator import CONSUMER, PROVIDER, Received
from connector.negotiation.outbox import Pending
from connector.negotiation.states import State
from connector.negotiation.store import Negotiation
from connector.rpc.auth import Caller

__all__ = ["check_callback", "local_pid", "negotiation_routes"]

_PROCESS_PREFIX = "urn:tds:process:"
_OFFER_PREFIX = "urn:tds:offer:"


def local_pid(process_id: str) -> str:
    """The process id tds keeps for a DSP one: its own ``urn:tds:process:PID`` as ``PID``,
    a peer's other URNs as they are; ``InvalidRequest`` (a DSP 400) for one that could
    reach a path or a URL (``identifiers.PROCESS_ID``)."""
    return PROCESS_ID.check(process_id).removeprefix(_PROCESS_PREFIX)


def message_id(caller: Caller, message: dict[str, Any]) -> str:
    """The inbox id of a DSP message: the same message from the same sender, the same id."""
    digest = hashlib.sha256(caller.participant.encode() + b"\n" + canonical_json(message))
    return "dsp-" + digest.hexdigest()[:40]


def _purpose(offer: dict[str, Any]) -> str:
    """The one purpose a request names: ``purpose eq X`` in a permission of its offer."""
    found = {
        c.get("rightOperand")
        for rule in offer.get("permission", [])
        for c in rule.get("constraint", [])
        if isinstance(c, dict)
        # As compacted with the DSP context: odrl:purpose (or its full IRI, sent).
        and c.get("leftOperand") == "odrl:purpose"
        and c.get("operator") == "eq"
    }
    if len(found) != 1 or not all(isinstance(p, str) and p.strip() for p in found):
        raise InvalidRequest(
            "name exactly one purpose: a constraint {leftOperand: odrl:purpose, operator: eq, "
            "rightOperand: <one of the offer's purposes>} in the offer's permission"
        )
    return str(found.pop())


def _product_and_offer(offer: dict[str, Any]) -> tuple[str, str]:
    offer_id = str(offer.get("@id", ""))
    product, _, name = offer_id.removeprefix(_OFFER_PREFIX).partition("/")
    if not offer_id.startswith(_OFFER_PREFIX) or not product or not name:
        raise InvalidRequest(
            "the offer's @id must be one the catalog lists (urn:tds:offer:PRODUCT/OFFER)"
        )
    target = offer.get("target")
    if target is not None and dataset_product_id(str(target)) != product:
        raise InvalidRequest(f"the offer's target {target!r} is not the dataset it offers")
    return product, name


def check_callback(address: str, caller: str, registered_host: Callable[[str], str]) -> None:
    """A callback address is https on the host the operator registered for the caller:
    the connector never sends a request to a URL a peer merely names."""
    url = urllib.parse.urlsplit(address)
    if url.scheme != "https" or not url.hostname:
        raise InvalidRequest("callbackAddress must be an https:// URL")
    if url.username or url.password:
        raise InvalidRequest("callbackAddress must not carry credentials")
    registered = registered_host(caller)
    if url.hostname.lower() != registered.lower():
        raise InvalidRequest(
            f"callbackAddress must be on the host the operator registered for {caller} "
            f"({registered}), not {url.hostname}"
        )


def _signed(message: dict[str, Any], what: str) -> str:
    signed = message.get(SIGNED_AGREEMENT)
    if not isinstance(signed, str) or not signed:
        raise InvalidRequest(
            f"a tds agreement is final only when both parties have signed it: send {what} "
            f"as {SIGNED_AGREEMENT!r} (docs/dsp.md, the tds profile)"
        )
    return signed


def negotiation_routes(exchange: Exchange) -> list[web.RouteDef]:
    """The negotiation endpoints, both roles."""

    def shown(n: Negotiation) -> dict[str, Any]:
        return negotiation_message(n)

    def own(caller: Caller, pid: str) -> Negotiation:
        try:
            n = exchange.negotiator.get(local_pid(pid))
        except NotFound:
            raise NotFound("no such negotiation") from None
        # Another participant's process looks exactly like a missing one (DSP: 404).
        if n.counterparty != caller.participant:
            raise NotFound("no such negotiation")
        return n

    def addressed(caller: Caller, pid: str, message: dict[str, Any]) -> Received:
        """Our negotiation the path names, with the message naming it and its peer's
        process id as we know them (a consumer may not know the provider's yet): read
        with whether the message was already processed, which the negotiator takes as
        its own first read (one read, not two)."""
        try:
            read = exchange.negotiator.received(local_pid(pid), message_id(caller, message))
        except NotFound:
            raise NotFound("no such negotiation") from None
        n = read.negotiation
        # Another participant's process looks exactly like a missing one (DSP: 404).
        if n.counterparty != caller.participant:
            raise NotFound("no such negotiation")
        mine, theirs = (
            ("providerPid", "consumerPid") if n.role == PROVIDER else ("consumerPid", "providerPid")
        )
        for key in (mine, theirs):  # optional in some messages' schemas, not on this path
            if not message.get(key):
                raise InvalidRequest(f"a message to /negotiations/{{pid}}/… names its {key}")
        if local_pid(str(message[mine])) != n.pid:
            raise InvalidRequest(f"the message's {mine} is not the process in the path")
        known = n.counterparty_pid
        if not known.startswith("pending:") and local_pid(str(message[theirs])) != known:
            raise NotFound("no such negotiation")
        return read

    def after(
        n: Negotiation, ack: negotiation_pb2.NegotiationAck, learned: str = ""
    ) -> Negotiation:
        """``n`` as the negotiator left it: the state its answer gives. Read again only
        when the peer's process id may have been learned meanwhile (a counter-offer or the
        agreement is how a consumer hears it) and is not ``learned``, the one the move
        this message made stored; the rest of the row a message does not change, and a
        read is a transaction."""
        if ack.pid == n.pid and learned and n.counterparty_pid.startswith("pending:"):
            return dataclasses.replace(n, state=State(ack.state), counterparty_pid=learned)
        if ack.pid != n.pid or n.counterparty_pid.startswith("pending:"):
            return exchange.negotiator.get(n.pid)
        return dataclasses.replace(n, state=State(ack.state))

    async def serve(
        request: web.Request,
        message_type: str,
        act: Callable[[Caller, dict[str, Any], Received], negotiation_pb2.NegotiationAck],
        moves_to: State | None = None,
        *,
        answer_first: bool = False,
    ) -> web.StreamResponse:
        """A message to ``{pid}/…``: who sent it (before its body is read), what it says,
        which of our negotiations it is for, then ``act`` on it and answer with the
        negotiation as it is now — in one hand-over to the worker threads (each costs a
        thread switch). ``moves_to``: the state in which the move this message makes
        stores the peer's process id it names (the agreement's). ``answer_first``: what
        the move queues for the peer (committed with it) is sent once the answer is
        written, not beside it."""
        pid = request.match_info["pid"]
        note_pids(request, provider_pid=pid)
        caller = exchange.caller(request)
        raw = await exchange.body(request)
        kept: list[Pending] = []

        def work() -> dict[str, Any]:
            with exchange.hold() if answer_first else contextlib.nullcontext([]) as held:
                try:
                    message = exchange.read(raw, message_type)
                    note_pids(
                        request,
                        str(message.get("providerPid", "")),
                        str(message.get("consumerPid", "")),
                    )
                    read = addressed(caller, pid, message)
                    n = read.negotiation
                    ack = act(caller, message, read)
                    learned = ""
                    if moves_to is not None and ack.state == moves_to.value != n.state.value:
                        theirs = "providerPid" if n.role == CONSUMER else "consumerPid"
                        learned = local_pid(str(message[theirs]))
                    return shown(after(n, ack, learned))
                finally:
                    kept.extend(held)

        try:
            response = exchange.answer("ContractNegotiation", await exchange.run(work))
            if kept:
                await response.prepare(request)
                await response.write_eof()
            return response
        finally:
            if kept:  # committed: they go out whatever became of the answer
                exchange.release(kept)

    async def request_contract(request: web.Request) -> web.Response:
        """``#negotiations-request-post``: REQUESTED, agreed at once when the
        contract policy allows without approval (then AGREED)."""
        caller = exchange.caller(request)  # before the body is read
        raw = await exchange.body(request)

        def work() -> dict[str, Any]:  # in one hand-over to the worker threads
            message = exchange.read(raw, "ContractRequestMessage")
            consumer_pid = str(message.get("consumerPid", ""))
            note_pids(request, consumer_pid=consumer_pid)
            # The schema has refused an initial request naming a providerPid (one of two).
            callback = str(message.get("callbackAddress", ""))
            check_callback(callback, caller.participant, exchange.registered_host)
            product, offer = _product_and_offer(message["offer"])
            req = negotiation_pb2.ContractRequest(
                message_id=message_id(caller, message),
                consumer_pid=local_pid(consumer_pid),
                product_id=product,
                offer_id=offer,
                purpose=_purpose(message["offer"]),
            )
            ack = exchange.negotiator.receive_request(caller, req, peer_address=callback)
            # What the store now holds for this request (a repeat's negotiation is the
            # one this consumer's process id started), without reading it back.
            return shown(
                Negotiation(
                    pid=ack.pid,
                    role=PROVIDER,
                    counterparty=caller.participant,
                    counterparty_pid=req.consumer_pid,
                    product=product,
                    offer=offer,
                    purpose=req.purpose,
                    state=State(ack.state),
                )
            )

        return exchange.answer("ContractNegotiation", await exchange.run(work), status=201)

    async def counter_request(request: web.Request) -> web.StreamResponse:
        """``#negotiations-providerpid-request-post``: the consumer's counter-request on
        our offer (OFFERED → REQUESTED), decided by the contract policy as a first request:
        refused (TERMINATED), waiting for approval (REQUESTED) or agreed at once (AGREED,
        the agreement then sent to the callback address)."""

        def act(
            caller: Caller, message: dict[str, Any], read: Received
        ) -> negotiation_pb2.NegotiationAck:
            n = read.negotiation
            if n.role != PROVIDER:
                raise NotFound("no such negotiation")
            product, offer = _product_and_offer(message["offer"])
            req = negotiation_pb2.ContractRequest(
                message_id=read.message_id,
                consumer_pid=n.counterparty_pid,
                provider_pid=n.pid,
                product_id=product,
                offer_id=offer,
                purpose=_purpose(message["offer"]),
            )
            return exchange.negotiator.receive_request(caller, req, read=read)

        return await serve(request, "ContractRequestMessage", act)

    async def receive_offer(request: web.Request) -> web.StreamResponse:
        """``#negotiations-consumerpid-offers-post``: the provider's counter-offer on our
        request (REQUESTED → OFFERED); our admin accepts or counters it."""

        def act(
            caller: Caller, message: dict[str, Any], read: Received
        ) -> negotiation_pb2.NegotiationAck:
            n = read.negotiation
            if n.role != CONSUMER:
                raise NotFound("no such negotiation")
            product, offer = _product_and_offer(message["offer"])
            offered = negotiation_pb2.ContractOffer(
                message_id=read.message_id,
                provider_pid=local_pid(str(message["providerPid"])),
                consumer_pid=n.pid,
                product_id=product,
                offer_id=offer,
                purpose=_purpose(message["offer"]),
            )
            return exchange.negotiator.receive_offer(caller, offered, read=read)

        return await serve(request, "ContractOfferMessage", act)

    async def get_negotiation(request: web.Request) -> web.Response:
        """``#negotiations-get-provider`` and ``#negotiations-get-consumer``."""
        pid = request.match_info["pid"]
        note_pids(request, provider_pid=pid)
        n = await exchange.run(own, exchange.caller(request), pid)
        return exchange.answer("ContractNegotiation", shown(n))

    async def verify_agreement(request: web.Request) -> web.StreamResponse:
        """``#negotiations-providerpid-agreement-verification-post``: the consumer's
        countersignature, VERIFIED then FINALIZED; FINALIZED is sent back as an event."""

        def act(
            caller: Caller, message: dict[str, Any], read: Received
        ) -> negotiation_pb2.NegotiationAck:
            n = read.negotiation
            if n.role != PROVIDER:
                raise NotFound("no such negotiation")
            verification = negotiation_pb2.AgreementMessage(
                message_id=read.message_id,
                provider_pid=n.pid,
                consumer_pid=n.counterparty_pid,
                agreement=_signed(message, "the countersigned agreement"),
            )
            return exchange.negotiator.receive_verification(caller, verification, read=read)

        # The FINALIZED event this queues goes out once the answer (FINALIZED too, for a
        # tds consumer) is written: sent beside it, the two raced on the consumer, each
        # read and taken for the same transition, the answer's on the critical path.
        return await serve(request, "ContractAgreementVerificationMessage", act, answer_first=True)

    async def receive_agreement(request: web.Request) -> web.StreamResponse:
        """``#negotiations-consumerpid-agreement-post``: verified against
        what was asked for, countersigned, and the verification sent back."""

        def act(
            caller: Caller, message: dict[str, Any], read: Received
        ) -> negotiation_pb2.NegotiationAck:
            n = read.negotiation
            if n.role != CONSUMER:
                raise NotFound("no such negotiation")
            signed = _signed(message, "the provider's signed agreement")
            try:  # parsed once: the negotiator verifies these terms, not a second parse
                parsed = parsed_agreement(signed)
            except (ValueError, KeyError, TypeError):
                raise InvalidRequest(f"{SIGNED_AGREEMENT} is not a signed tds agreement") from None
            agreement_id = parsed.agreement.id
            named = message["agreement"].get("@id")
            if named not in (agreement_id, f"urn:tds:agreement:{agreement_id}"):
                raise InvalidRequest("the agreement's @id is not the signed agreement's")
            agreement = negotiation_pb2.AgreementMessage(
                message_id=read.message_id,
                provider_pid=local_pid(str(message["providerPid"])),
                consumer_pid=n.pid,
                agreement=signed,
            )
            return exchange.negotiator.receive_agreement(
                caller, agreement, read=read, parsed=parsed
            )

        return await serve(request, "ContractAgreementMessage", act, State.VERIFIED)

    async def receive_event(request: web.Request) -> web.StreamResponse:
        """``#negotiations-providerpid-events-post`` (ACCEPTED) and
        ``#negotiations-consumerpid-events-post`` (FINALIZED)."""

        def act(
            caller: Caller, message: dict[str, Any], read: Received
        ) -> negotiation_pb2.NegotiationAck:
            n = read.negotiation
            event = str(message["eventType"])
            expected = State.ACCEPTED if n.role == PROVIDER else State.FINALIZED
            if event != expected.value:
                raise InvalidRequest(f"the {n.role} of a negotiation takes {expected.value} events")
            msg = negotiation_pb2.NegotiationEvent(
                message_id=read.message_id,
                provider_pid=n.pid if n.role == PROVIDER else n.counterparty_pid,
                consumer_pid=n.pid if n.role == CONSUMER else n.counterparty_pid,
                state=event,
            )
            if n.role == PROVIDER:
                return exchange.negotiator.receive_accepted(caller, msg, read=read)
            return exchange.negotiator.receive_final(caller, msg, read=read)

        return await serve(request, "ContractNegotiationEventMessage", act)

    async def terminate(request: web.Request) -> web.StreamResponse:
        """``#negotiations-providerpid-termination-post`` and
        ``#negotiations-consumerpid-termination-post``."""

        def act(
            caller: Caller, message: dict[str, Any], read: Received
        ) -> negotiation_pb2.NegotiationAck:
            n = read.negotiation
            termination = negotiation_pb2.NegotiationTermination(
                message_id=read.message_id,
                provider_pid=n.pid if n.role == PROVIDER else n.counterparty_pid,
                consumer_pid=n.pid if n.role == CONSUMER else n.counterparty_pid,
                reasons=[str(r)[:500] for r in message.get("reason", [])][:5]
                or [f"terminated by {caller.participant}"],
            )
            return exchange.negotiator.receive_termination(caller, termination)

        return await serve(request, "ContractNegotiationTerminationMessage", act)

    return [
        web.post("/negotiations/request", request_contract),
        web.get("/negotiations/{pid}", get_negotiation),
        web.post("/negotiations/{pid}/request", counter_request),
        web.post("/negotiations/{pid}/offers", receive_offer),
        web.post("/negotiations/{pid}/agreement/verification", verify_agreement),
        web.post("/negotiations/{pid}/agreement", receive_agreement),
        web.post("/negotiations/{pid}/events", receive_event),
        web.post("/negotiations/{pid}/termination", terminate),
    ]
