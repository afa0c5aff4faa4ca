"""Dataspace Protocol 2025-1 views: catalogs, negotiations and agreements as JSON-LD.

tds speaks gRPC between its own connectors; these renderings are what the DSP HTTPS
binding (connector.dsp, DESIGN §10) sends and what ``--dsp`` prints. Offers become
ODRL ``Offer`` policies whose permission to ``use`` is constrained by purpose, validity
window, transfer count, byte limit and, for streams, message and per-period limits;
agreements become ``ContractAgreementMessage``s.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from connector.catalog.products import Offer, Product
from connector.identity.names import participant_uri
from connector.negotiation.agreement import Agreement

if TYPE_CHECKING:  # the CLI renders without the database stack
    from connector.negotiation.store import Negotiation

__all__ = [
    "BYTE_COUNT",
    "CONTEXT",
    "MESSAGE_COUNT",
    "SIGNED_AGREEMENT",
    "agreement_message",
    "catalog_message",
    "contract_request_message",
    "dataset_message",
    "event_message",
    "negotiation_message",
    "offer_message",
    "process_id",
    "termination_message",
    "verification_message",
]

CONTEXT = ["https://w3id.org/dspace/2025/1/context.jsonld"]
SIGNED_AGREEMENT = "urn:tds:signedAgreement"
"""The tds profile's one extension property (an absolute IRI, so JSON-LD processing keeps
it): the agreement as signed (JWS JSON). In a ``ContractAgreementMessage`` it carries the
provider's signature; in a ``ContractAgreementVerificationMessage`` the consumer's
countersignature as well, without which a tds agreement is not final."""
BYTE_COUNT = "urn:tds:byteCount"
"""The tds profile's left operand (``lteq``) for the bytes delivered under an agreement in
all; suffixed ``PerMinute``, ``PerHour`` or ``PerDay``, a stream's bytes in each period."""
MESSAGE_COUNT = "urn:tds:messageCount"
"""Likewise for a stream's messages: in all, or suffixed, in each period."""


def _time(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _urn(kind: str, value: str) -> str:
    return value if value.startswith("urn:") else f"urn:tds:{kind}:{value}"


def _period(per_period: Any) -> tuple[str, int, int] | None:
    """A stream's per-period limits as ``(period, max_messages, max_bytes)``, from each
    shape that carries them: an agreement's dict, an offer's ``PeriodLimits`` or a catalog
    summary's message (empty when the offer sets none)."""
    if isinstance(per_period, dict):
        return (
            per_period["period"],
            per_period.get("max_messages", 0),
            per_period.get("max_bytes", 0),
        )
    if per_period is None or not per_period.period:
        return None
    return per_period.period, per_period.max_messages, per_period.max_bytes


def _at_most(left: str, value: int) -> dict[str, Any]:
    return {"leftOperand": left, "operator": "lteq", "rightOperand": str(value)}


def _constraints(terms: Any, purposes: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """The ``use`` permission's constraints for an offer's or an agreement's ``terms``."""
    # ODRL core left operands, as compact IRIs: the DSP context names no bare "purpose"
    # term, so a bare name would expand to a relative IRI, not odrl:purpose.
    constraints: list[dict[str, Any]] = [
        {"leftOperand": "odrl:purpose", "operator": "isAnyOf", "rightOperand": list(purposes)},
        {
            "leftOperand": "odrl:dateTime",
            "operator": "gteq",
            "rightOperand": _time(terms.valid_from_ns),
        },
        {
            "leftOperand": "odrl:dateTime",
            "operator": "lt",
            "rightOperand": _time(terms.valid_until_ns),
        },
    ]
    if terms.max_transfers:
        constraints.append(_at_most("odrl:count", terms.max_transfers))
    # Volumes have no ODRL core left operand (odrl:count counts the action, not what it
    # delivers): the tds profile's own, absolute IRIs like SIGNED_AGREEMENT.
    if terms.max_bytes:
        constraints.append(_at_most(BYTE_COUNT, terms.max_bytes))
    if terms.max_messages:
        constraints.append(_at_most(MESSAGE_COUNT, terms.max_messages))
    period = _period(terms.per_period)
    if period is not None:
        name, messages, size = period
        if messages:
            constraints.append(_at_most(f"{MESSAGE_COUNT}Per{name.capitalize()}", messages))
        if size:
            constraints.append(_at_most(f"{BYTE_COUNT}Per{name.capitalize()}", size))
    return constraints


def _offer(product: Product | Any, offer: Offer | Any) -> dict[str, Any]:
    return {
        "@id": _urn("offer", f"{product.id}/{offer.id}"),
        "@type": "Offer",
        "permission": [{"action": "use", "constraint": _constraints(offer, offer.purposes)}],
    }


def _dataset(product: Product | Any, service_id: str) -> dict[str, Any]:
    return {
        "@id": _urn("dataset", product.id),
        "@type": "Dataset",
        "hasPolicy": [_offer(product, o) for o in product.offers],
        "distribution": [
            {"@type": "Distribution", "format": "tds-grpc-PULL", "accessService": service_id}
        ],
    }


def process_id(pid: str) -> str:
    """A process id as DSP messages carry it: tds's own as ``urn:tds:process:PID``; a
    peer's (already a URN) as it sent it."""
    return _urn("process", pid)


def _participant(provider: str, space: str) -> str:
    """The participant identifier: the certificate's SAN URI when the space is known."""
    return participant_uri(space, provider) if space else _urn("participant", provider)


def catalog_message(
    provider: str, products: list[Product] | list[Any], endpoint: str, *, space: str = ""
) -> dict[str, Any]:
    """A DSP ``Catalog`` of the products a caller may see (``Product``s or catalog summaries).

    ``space``: names the provider by its certificate's SAN URI (``urn:tds:SPACE:participant:ID``).
    """
    service_id = _urn("service", provider)
    catalog: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": _urn("catalog", provider),
        "@type": "Catalog",
        "participantId": _participant(provider, space),
        "service": [{"@id": service_id, "@type": "DataService", "endpointURL": endpoint}],
    }
    if products:
        catalog["dataset"] = [_dataset(p, service_id) for p in products]
    return catalog


def dataset_message(provider: str, product: Product | Any, endpoint: str) -> dict[str, Any]:
    """A DSP ``Dataset`` (the answer to a ``DatasetRequestMessage``), its data service inline."""
    dataset = _dataset(product, _urn("service", provider))
    for distribution in dataset["distribution"]:
        distribution["accessService"] = {
            "@id": distribution["accessService"],
            "@type": "DataService",
            "endpointURL": endpoint,
        }
    return {"@context": CONTEXT, **dataset}


def negotiation_message(n: Negotiation) -> dict[str, Any]:
    """A DSP ``ContractNegotiation`` (the state as seen from this side)."""
    mine, theirs = process_id(n.pid), process_id(n.counterparty_pid)
    provider_pid, consumer_pid = (mine, theirs) if n.role == "provider" else (theirs, mine)
    return {
        "@context": CONTEXT,
        "@type": "ContractNegotiation",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "state": n.state.value,
    }


def agreement_message(agreement: Agreement, *, space: str = "", signed: str = "") -> dict[str, Any]:
    """A DSP ``ContractAgreementMessage`` carrying the agreement's terms (``space``: the
    parties named by their certificates' SAN URIs; ``signed``: the JWS, sent to a consumer
    as :data:`SIGNED_AGREEMENT`)."""
    message = {
        "@context": CONTEXT,
        "@type": "ContractAgreementMessage",
        "providerPid": _urn("process", agreement.provider_pid),
        "consumerPid": _urn("process", agreement.consumer_pid),
        "agreement": {
            "@id": _urn("agreement", agreement.id),
            "@type": "Agreement",
            "target": _urn("dataset", agreement.product),
            "timestamp": _time(agreement.issued_ms * 1_000_000),
            "assigner": _participant(agreement.provider, space),
            "assignee": _participant(agreement.consumer, space),
            "permission": [
                {
                    "action": "use",
                    "constraint": _constraints(agreement, [agreement.purpose]),
                }
            ],
        },
    }
    if signed:
        message[SIGNED_AGREEMENT] = signed
    return message


def _pids(provider_pid: str, consumer_pid: str) -> dict[str, str]:
    return {"providerPid": process_id(provider_pid), "consumerPid": process_id(consumer_pid)}


def _proposed(product: str, offer: str, purpose: str, terms: Any = None) -> dict[str, Any]:
    """An ODRL ``Offer`` naming one offer of the catalog and the one purpose proposed
    (``odrl:purpose eq``); with ``terms`` (the published ``Offer``), its limits too."""
    constraints: list[dict[str, Any]] = [
        {"leftOperand": "odrl:purpose", "operator": "eq", "rightOperand": purpose}
    ]
    if terms is not None:
        constraints += _constraints(terms, [purpose])[1:]  # all but the purposes' list
    return {
        "@id": _urn("offer", f"{product}/{offer}"),
        "@type": "Offer",
        "target": _urn("dataset", product),
        "permission": [{"action": "use", "constraint": constraints}],
    }


def contract_request_message(
    *,
    consumer_pid: str,
    product: str,
    offer: str,
    purpose: str,
    callback: str = "",
    provider_pid: str = "",
) -> dict[str, Any]:
    """A consumer's ``ContractRequestMessage`` for one offer of the provider's catalog,
    with the one purpose it asks for (``odrl:purpose eq``): an initial one (with the
    ``callback`` address) or, with ``provider_pid``, a counter-request on the provider's
    offer (the specification allows one of the two)."""
    message: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "ContractRequestMessage",
        "consumerPid": process_id(consumer_pid),
        "offer": _proposed(product, offer, purpose),
    }
    if provider_pid:
        message["providerPid"] = process_id(provider_pid)
    else:
        message["callbackAddress"] = callback
    return message


def offer_message(
    *,
    provider_pid: str,
    consumer_pid: str,
    product: str,
    offer: str,
    purpose: str,
    terms: Any = None,
) -> dict[str, Any]:
    """A provider's ``ContractOfferMessage`` on a consumer's request: one published offer
    of the product (``terms``, when at hand, adds its limits) for one purpose."""
    return {
        "@context": CONTEXT,
        "@type": "ContractOfferMessage",
        **_pids(provider_pid, consumer_pid),
        "offer": _proposed(product, offer, purpose, terms),
    }


def verification_message(
    provider_pid: str, consumer_pid: str, countersigned: str
) -> dict[str, Any]:
    """A ``ContractAgreementVerificationMessage`` carrying the countersigned agreement."""
    return {
        "@context": CONTEXT,
        "@type": "ContractAgreementVerificationMessage",
        **_pids(provider_pid, consumer_pid),
        SIGNED_AGREEMENT: countersigned,
    }


def event_message(provider_pid: str, consumer_pid: str, event: str) -> dict[str, Any]:
    """A ``ContractNegotiationEventMessage`` (``ACCEPTED`` or ``FINALIZED``)."""
    return {
        "@context": CONTEXT,
        "@type": "ContractNegotiationEventMessage",
        **_pids(provider_pid, consumer_pid),
        "eventType": event,
    }


def termination_message(
    provider_pid: str, consumer_pid: str, reasons: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """A ``ContractNegotiationTerminationMessage`` with the reasons given."""
    message: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "ContractNegotiationTerminationMessage",
        **_pids(provider_pid, consumer_pid),
    }
    if reasons:
        message["reason"] = list(reasons)
    return message
