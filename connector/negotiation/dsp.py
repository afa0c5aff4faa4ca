"""Dataspace Protocol 2025-1 views: catalogs, negotiations and agreements as JSON-LD.

tds speaks gRPC between its own connectors; these renderings are the contract for the
planned DSP HTTPS binding (DESIGN §9) and for tools that read DSP messages. Offers become
ODRL ``Offer`` policies whose permission to ``use`` is constrained by purpose, validity
window and transfer count; agreements become ``ContractAgreementMessage``s.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from connector.catalog.products import Offer, Product
from connector.negotiation.agreement import Agreement

if TYPE_CHECKING:  # the CLI renders without the database stack
    from connector.negotiation.store import Negotiation

__all__ = ["CONTEXT", "agreement_message", "catalog_message", "negotiation_message"]

CONTEXT = ["https://w3id.org/dspace/2025/1/context.jsonld"]


def _time(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _urn(kind: str, value: str) -> str:
    return value if value.startswith("urn:") else f"urn:tds:{kind}:{value}"


def _constraints(
    purposes: tuple[str, ...] | list[str], start_ns: int, end_ns: int, max_transfers: int
) -> list[dict[str, Any]]:
    constraints: list[dict[str, Any]] = [
        {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": list(purposes)},
        {"leftOperand": "dateTime", "operator": "gteq", "rightOperand": _time(start_ns)},
        {"leftOperand": "dateTime", "operator": "lt", "rightOperand": _time(end_ns)},
    ]
    if max_transfers:
        constraints.append(
            {"leftOperand": "count", "operator": "lteq", "rightOperand": str(max_transfers)}
        )
    return constraints


def _offer(product: Product | Any, offer: Offer | Any) -> dict[str, Any]:
    return {
        "@id": _urn("offer", f"{product.id}/{offer.id}"),
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": _constraints(
                    offer.purposes, offer.valid_from_ns, offer.valid_until_ns, offer.max_transfers
                ),
            }
        ],
    }


def catalog_message(
    provider: str, products: list[Product] | list[Any], endpoint: str
) -> dict[str, Any]:
    """A DSP ``Catalog`` of the products a caller may see (``Product``s or catalog summaries)."""
    service_id = _urn("service", provider)
    catalog: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": _urn("catalog", provider),
        "@type": "Catalog",
        "participantId": _urn("participant", provider),
        "service": [{"@id": service_id, "@type": "DataService", "endpointURL": endpoint}],
    }
    if products:
        catalog["dataset"] = [
            {
                "@id": _urn("dataset", p.id),
                "@type": "Dataset",
                "hasPolicy": [_offer(p, o) for o in p.offers],
                "distribution": [
                    {
                        "@type": "Distribution",
                        "format": "tds-grpc-PULL",
                        "accessService": service_id,
                    }
                ],
            }
            for p in products
        ]
    return catalog


def negotiation_message(n: Negotiation) -> dict[str, Any]:
    """A DSP ``ContractNegotiation`` (the state as seen from this side)."""
    mine, theirs = _urn("process", n.pid), _urn("process", n.counterparty_pid)
    provider_pid, consumer_pid = (mine, theirs) if n.role == "provider" else (theirs, mine)
    return {
        "@context": CONTEXT,
        "@type": "ContractNegotiation",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "state": n.state.value,
    }


def agreement_message(agreement: Agreement) -> dict[str, Any]:
    """A DSP ``ContractAgreementMessage`` carrying the agreement's terms."""
    return {
        "@context": CONTEXT,
        "@type": "ContractAgreementMessage",
        "providerPid": _urn("process", agreement.provider_pid),
        "consumerPid": _urn("process", agreement.consumer_pid),
        "agreement": {
            "@id": _urn("agreement", agreement.id),
            "@type": "Agreement",
            "target": _urn("dataset", agreement.product),
            "timestamp": _time(agreement.issued_ms * 1_000_000),
            "assigner": _urn("participant", agreement.provider),
            "assignee": _urn("participant", agreement.consumer),
            "permission": [
                {
                    "action": "use",
                    "constraint": _constraints(
                        [agreement.purpose],
                        agreement.valid_from_ns,
                        agreement.valid_until_ns,
                        agreement.max_transfers,
                    ),
                }
            ],
        },
    }
