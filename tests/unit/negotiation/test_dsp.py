"""DSP 2025-1 renderings validate against the shared schemas; every example parses."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.catalog.products import parse_description
from connector.dsp.jsonld import _load_document, read_message
from connector.negotiation.agreement import sign_agreement
from connector.negotiation.dsp import (
    BYTE_COUNT,
    MESSAGE_COUNT,
    SIGNED_AGREEMENT,
    agreement_message,
    catalog_message,
    contract_request_message,
    dataset_message,
    event_message,
    negotiation_message,
    offer_message,
    termination_message,
    verification_message,
)
from connector.negotiation.states import State
from connector.negotiation.store import Negotiation
from tests.unit.catalog.test_products import STREAM, mutate_stream
from tests.unit.negotiation.test_agreement import AGREEMENT

VECTORS = Path(__file__).resolve().parents[4] / "shared" / "vectors" / "dsp-2025-1"
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "products" / "traffic-flow.toml"
pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"DSP vectors not found at {VECTORS}")
# Known quirk of the published artefacts (see ../shared/vectors/README.md).
EXAMPLE_SCHEMA_QUIRKS = {"common/example/dataservice-did-service.json"}
# A published offer with a transfer limit, as a counter-offer names it.
OFFER = dataclasses.replace(
    parse_description(EXAMPLE.read_text(), owner="city-gov").offers[0], id="o2", max_transfers=2
)


def registry() -> Any:
    referencing = pytest.importorskip("referencing")
    resources = []
    for path in VECTORS.rglob("*-schema.json"):
        text = re.sub(r"#definitions/", "#/definitions/", path.read_text())
        schema = json.loads(text)
        resources.append((schema["$id"], referencing.Resource.from_contents(schema)))
    return referencing.Registry().with_resources(resources)


def validate(document: dict[str, Any], schema_path: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(
        re.sub(r"#definitions/", "#/definitions/", (VECTORS / schema_path).read_text())
    )
    validator = jsonschema.Draft201909Validator(schema, registry=registry())
    errors = sorted(validator.iter_errors(document), key=str)
    assert not errors, [e.message for e in errors[:3]]


def test_catalog_validates() -> None:
    product = parse_description(EXAMPLE.read_text(), owner="city-gov")
    validate(
        catalog_message("city-gov", [product], "grpcs://127.0.0.1:7001"),
        "catalog/catalog-schema.json",
    )


def test_negotiation_validates_for_both_roles() -> None:
    for role in ("provider", "consumer"):
        n = Negotiation(
            pid="p-1",
            role=role,
            counterparty="x",
            counterparty_pid="c-1",
            product="p",
            offer="o",
            purpose="research",
            state=State.AGREED,
        )
        validate(negotiation_message(n), "negotiation/contract-negotiation-schema.json")


def test_agreement_validates() -> None:
    validate(agreement_message(AGREEMENT), "negotiation/contract-agreement-message-schema.json")


LIMITED = {
    "max_messages": 1000,
    "per_period": {"period": "hour", "max_messages": 100, "max_bytes": 20000},
}
LIMITS = [
    {"leftOperand": MESSAGE_COUNT, "operator": "lteq", "rightOperand": "1000"},
    {"leftOperand": f"{MESSAGE_COUNT}PerHour", "operator": "lteq", "rightOperand": "100"},
    {"leftOperand": f"{BYTE_COUNT}PerHour", "operator": "lteq", "rightOperand": "20000"},
]


GIB = {"leftOperand": BYTE_COUNT, "operator": "lteq", "rightOperand": str(1 << 30)}


def constraints(policy: dict[str, Any]) -> list[dict[str, Any]]:
    """The constraints of a policy's one ``use`` permission."""
    return list(policy["permission"][0]["constraint"])


def tds_constraints(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in constraints(policy) if c["leftOperand"].startswith("urn:tds:")]


def test_a_stream_offers_limits_are_odrl_constraints_of_a_valid_dataset() -> None:
    product = parse_description(mutate_stream(STREAM, ["station", "mm"], **LIMITED), owner="gov")
    dataset = dataset_message("gov", product, "https://gov.example:8443")
    validate(dataset, "catalog/dataset-schema.json")
    # The example's offer also limits the bytes under the agreement (1 GiB).
    assert tds_constraints(dataset["hasPolicy"][0]) == [GIB, *LIMITS]
    validate(catalog_message("gov", [product], "grpcs://gov"), "catalog/catalog-schema.json")
    # Absolute IRIs: JSON-LD processing with the DSP context keeps them as they are.
    pyld = pytest.importorskip("pyld")
    expanded = json.dumps(pyld.jsonld.expand(dataset, {"documentLoader": _load_document}))
    for limit in LIMITS:
        assert json.dumps({"@id": limit["leftOperand"]}) in expanded, expanded


def test_a_period_limit_on_bytes_alone_renders_no_message_constraint() -> None:
    terms = {"max_bytes": 0, "per_period": {"period": "day", "max_bytes": 5}}
    product = parse_description(mutate_stream(STREAM, ["mm"], **terms), owner="gov")
    policy = dataset_message("gov", product, "x")["hasPolicy"][0]
    assert tds_constraints(policy) == [
        {"leftOperand": f"{BYTE_COUNT}PerDay", "operator": "lteq", "rightOperand": "5"}
    ]


def test_an_offer_without_limits_renders_no_limit_constraint() -> None:
    unlimited = {"max_transfers": 0, "max_bytes": 0}
    product = parse_description(mutate_stream(STREAM, ["mm"], **unlimited), owner="gov")
    offer = product.offers[0]
    assert (offer.max_transfers, offer.max_bytes, offer.max_messages) == (0, 0, 0)
    policy = dataset_message("gov", product, "x")["hasPolicy"][0]
    assert [c["leftOperand"] for c in constraints(policy)] == [
        "odrl:purpose",
        "odrl:dateTime",
        "odrl:dateTime",
    ]


def test_an_agreement_carries_its_byte_and_stream_limits() -> None:
    limited = dataclasses.replace(AGREEMENT, max_transfers=0, **LIMITED)
    message = agreement_message(limited)
    validate(message, "negotiation/contract-agreement-message-schema.json")
    assert tds_constraints(message["agreement"]) == [GIB, *LIMITS]


def sent_messages() -> list[Any]:
    """Every negotiation message a tds connector sends over the binding, as it sends it."""
    signed = sign_agreement(AGREEMENT, ed25519.Ed25519PrivateKey.generate())
    return [
        pytest.param(message, schema, id=message["@type"] + suffix)
        for message, schema, suffix in (
            (
                contract_request_message(
                    consumer_pid="c0ffee",
                    product="traffic",
                    offer="o1",
                    purpose="research",
                    callback="https://b.example:8443",
                ),
                "contract-request-message-schema.json",
                "",
            ),
            (
                contract_request_message(
                    consumer_pid="c0ffee",
                    provider_pid="p-1",
                    product="traffic",
                    offer="o2",
                    purpose="planning",
                ),
                "contract-request-message-schema.json",
                "-counter-request",
            ),
            (
                offer_message(
                    provider_pid="p-1",
                    consumer_pid="urn:uuid:c-1",
                    product="traffic",
                    offer="o2",
                    purpose="planning",
                    terms=OFFER,
                ),
                "contract-offer-message-schema.json",
                "",
            ),
            (
                offer_message(
                    provider_pid="p-1",
                    consumer_pid="urn:uuid:c-1",
                    product="traffic",
                    offer="o2",
                    purpose="planning",
                ),
                "contract-offer-message-schema.json",
                "-no-longer-published",
            ),
            (
                event_message("p-1", "urn:uuid:c-1", "ACCEPTED"),
                "contract-negotiation-event-message-schema.json",
                "-accepted",
            ),
            (
                agreement_message(AGREEMENT, space="city", signed=signed),
                "contract-agreement-message-schema.json",
                "",
            ),
            (
                verification_message("p-1", "urn:uuid:c-1", signed),
                "contract-agreement-verification-message-schema.json",
                "",
            ),
            (
                event_message("p-1", "urn:uuid:c-1", "FINALIZED"),
                "contract-negotiation-event-message-schema.json",
                "",
            ),
            (
                termination_message("p-1", "urn:uuid:c-1", ["rejected by the provider"]),
                "contract-negotiation-termination-message-schema.json",
                "",
            ),
            (
                termination_message("p-1", "urn:uuid:c-1", []),
                "contract-negotiation-termination-message-schema.json",
                "-no-reason",
            ),
        )
    ]


def test_an_offer_names_one_purpose_and_the_published_offers_limits() -> None:
    message = offer_message(
        provider_pid="p-1",
        consumer_pid="c-1",
        product="traffic",
        offer="o2",
        purpose="planning",
        terms=OFFER,
    )
    (permission,) = message["offer"]["permission"]
    purposes = [c for c in permission["constraint"] if c["leftOperand"] == "odrl:purpose"]
    assert purposes == [
        {"leftOperand": "odrl:purpose", "operator": "eq", "rightOperand": "planning"}
    ]
    assert {"leftOperand": "odrl:count", "operator": "lteq", "rightOperand": "2"} in permission[
        "constraint"
    ]
    assert message["offer"]["@id"] == "urn:tds:offer:traffic/o2"
    # A counter-request names the provider's process and no callback (one of the two).
    counter = contract_request_message(
        consumer_pid="c", provider_pid="p", product="traffic", offer="o2", purpose="planning"
    )
    assert "callbackAddress" not in counter and counter["providerPid"] == "urn:tds:process:p"


@pytest.mark.parametrize(("message", "schema"), sent_messages())
def test_contract_negotiation_messages_tds_sends_validate(
    message: dict[str, Any], schema: str
) -> None:
    validate(message, f"negotiation/{schema}")
    # And a receiver's JSON-LD processing keeps what tds reads, the signed agreement too.
    read = read_message(message, message["@type"])
    assert read.get(SIGNED_AGREEMENT) == message.get(SIGNED_AGREEMENT)
    assert {k: read[k] for k in ("providerPid", "consumerPid") if k in message} == {
        k: message[k] for k in ("providerPid", "consumerPid") if k in message
    }


def examples() -> list[Any]:
    if not VECTORS.is_dir():
        return []
    return [
        pytest.param(p, id=str(p.relative_to(VECTORS)))
        for p in sorted(VECTORS.rglob("example/*.json"))
    ]


@pytest.mark.parametrize("path", examples())
def test_every_example_message_parses_and_validates(path: Path) -> None:
    document = json.loads(path.read_text())
    assert isinstance(document, dict)
    relative = str(path.relative_to(VECTORS))
    if relative in EXAMPLE_SCHEMA_QUIRKS:
        return
    name = path.stem.split("_")[0].removesuffix("-full")
    schema = path.parent.parent / f"{name}-schema.json"
    if schema.exists():
        validate(document, str(schema.relative_to(VECTORS)))
