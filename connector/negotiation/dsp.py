"""Dataspace Protocol 2025-1 views: catalogs, negotiations and agreements as JSON-LD.

tds speaks gRPC between its own connectors; these renderings are what the DSP HTTPS
binding (connector.dsp, DESIGN §10) sends and what ``--dsp`` prints. Offers become
ODRL ``Offer`` policies whose permission to ``use`` is constrained by purpose, validity
window and transfer count; agreements become ``ContractAgreementMessage``s.
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
    "CONTEXT",
    "agreement_message",
    "catalog_message",
    "dataset_message",
    "negotiation_message",
]

CONTEXT = ["https://w3id.org/dspace/2025/1/context.jsonld"]


def _time(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _urn(kind: str, value: str) -> str:
    return value if value.startswith("urn:") else f"urn:tds:{kind}:{value}"


def _constraints(
    purposes: tuple[str, ...] | list[str], start_ns: int, end_ns: int, max_transfers: int
) -> list[dict[str, Any]]:
    # ODRL core left operands, as compact IRIs: the DSP context names no bare "purpose"
    # term, so a bare name would expand to a relative IRI, not odrl:purpose.
    constraints: list[dict[str, Any]] = [
        {"leftOperand": "odrl:purpose", "operator": "isAnyOf", "rightOperand": list(purposes)},
        {"leftOperand": "odrl:dateTime", "operator": "gteq", "rightOperand": _time(start_ns)},
        {"leftOperand": "odrl:dateTime", "operator": "lt", "rightOperand": _time(end_ns)},
    ]
    if max_transfers:
        constraints.append(
            {"leftOperand": "odrl:count", "operator": "lteq", "rightOperand": str(max_transfers)}
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


def _dataset(product: Product | Any, service_id: str) -> dict[str, Any]:
    return {
        "@id": _urn("dataset", product.id),
        "@type": "Dataset",
        "hasPolicy": [_offer(product, o) for o in product.offers],
        "distribution": [
            {"@type": "Distribution", "format": "tds-grpc-PULL", "accessService": service_id}
        ],
    }


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
    mine, theirs = _urn("process", n.pid), _urn("process", n.counterparty_pid)
    provider_pid, consumer_pid = (mine, theirs) if n.role == "provider" else (theirs, mine)
    return {
        "@context": CONTEXT,
        "@type": "ContractNegotiation",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "state": n.state.value,
    }


def agreement_message(agreement: Agreement, *, space: str = "") -> dict[str, Any]:
    """A DSP ``ContractAgreementMessage`` carrying the agreement's terms (``space``: the
    parties named by their certificates' SAN URIs)."""
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
            "assigner": _participant(agreement.provider, space),
            "assignee": _participant(agreement.consumer, space),
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
