"""DSP contract negotiation, provider side of the HTTPS binding (DSP 2025-1 §8).

Each message is handed to the same :class:`Negotiator` that serves gRPC's
``NegotiationService``: the same store, contract policy, inbox and audit entries. A DSP
message has no message id of its own, so the inbox id of one is a digest of its sender
and its expanded-then-compacted content: the same message sent again is recognised as a
repeat and changes nothing.

Built: ``POST /negotiations/request``, ``GET /negotiations/{pid}``,
``POST /negotiations/{pid}/termination``. Not built yet (no route, so 404): counter-offers
(``/negotiations/{pid}/request``, ``/events`` ACCEPTED), ``/agreement/verification`` (a
DSP verification message carries no countersignature, which a tds agreement needs) and the
consumer's callbacks. The ``callbackAddress`` is checked (https, on the caller's
registered host) though nothing is sent to it yet.
"""

from __future__ import annotations

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
from connector.negotiation.dsp import negotiation_message
from connector.negotiation.negotiator import PROVIDER
from connector.negotiation.store import Negotiation
from connector.rpc.auth import Caller

__all__ = ["check_callback", "local_pid", "negotiation_routes"]

_PROCESS_PREFIX = "urn:tds:process:"
_OFFER_PREFIX = "urn:tds:offer:"


def local_pid(process_id: str) -> str:
    """This connector's process id of a DSP ``providerPid`` (``urn:tds:process:PID``)."""
    return process_id.removeprefix(_PROCESS_PREFIX)


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


def negotiation_routes(exchange: Exchange) -> list[web.RouteDef]:
    """The provider-side negotiation endpoints built so far."""

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

    async def request_contract(request: web.Request) -> web.Response:
        """DSP §8.2.2 contract request endpoint (init): REQUESTED, agreed at once when the
        contract policy allows without approval (then AGREED)."""
        caller = await exchange.caller(request)
        message = await exchange.message(request, "ContractRequestMessage")
        consumer_pid = str(message.get("consumerPid", ""))
        note_pids(request, consumer_pid=consumer_pid)
        # The schema has refused an initial request naming a providerPid (one of the two).
        await exchange.run(
            check_callback,
            str(message.get("callbackAddress", "")),
            caller.participant,
            exchange.registered_host,
        )
        product, offer = _product_and_offer(message["offer"])
        req = negotiation_pb2.ContractRequest(
            message_id=message_id(caller, message),
            consumer_pid=consumer_pid,
            product_id=product,
            offer_id=offer,
            purpose=_purpose(message["offer"]),
        )
        ack = await exchange.run(exchange.negotiator.receive_request, caller, req)
        n = await exchange.run(exchange.negotiator.get, ack.pid)
        return exchange.answer("ContractNegotiation", shown(n), status=201)

    async def get_negotiation(request: web.Request) -> web.Response:
        """DSP §8.2.1 contract negotiation endpoint."""
        caller = await exchange.caller(request)
        pid = request.match_info["pid"]
        note_pids(request, provider_pid=pid)
        n = await exchange.run(own, caller, pid)
        return exchange.answer("ContractNegotiation", shown(n))

    async def terminate(request: web.Request) -> web.Response:
        """DSP §8.2.6 contract negotiation termination endpoint."""
        caller = await exchange.caller(request)
        pid = request.match_info["pid"]
        note_pids(request, provider_pid=pid)
        message = await exchange.message(request, "ContractNegotiationTerminationMessage")
        note_pids(request, provider_pid=pid, consumer_pid=str(message["consumerPid"]))
        if message["providerPid"] != pid:
            raise InvalidRequest("the message's providerPid is not the one in the path")
        n = await exchange.run(own, caller, pid)
        if n.role != PROVIDER or message["consumerPid"] != n.counterparty_pid:
            raise NotFound("no such negotiation")
        termination = negotiation_pb2.NegotiationTermination(
            message_id=message_id(caller, message),
            provider_pid=n.pid,
            consumer_pid=n.counterparty_pid,
            reasons=[str(r)[:500] for r in message.get("reason", [])][:5]
            or [f"terminated by {caller.participant}"],
        )
        await exchange.run(exchange.negotiator.receive_termination, caller, termination)
        return web.json_response(shown(await exchange.run(own, caller, pid)))

    return [
        web.post("/negotiations/request", request_contract),
        web.get("/negotiations/{pid}", get_negotiation),
        web.post("/negotiations/{pid}/termination", terminate),
    ]
