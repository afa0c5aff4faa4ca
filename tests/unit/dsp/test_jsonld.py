"""Incoming DSP messages: expanded with the bundled contexts only, type-checked, compacted
and validated; the specification's example messages are accepted."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from cachetools import LRUCache
from pyld import jsonld
from pyld.context_resolver import ContextResolver

from connector.dsp.jsonld import _SCHEMAS, CONTEXT, CONTEXT_URL, _bundled, read_message, schema_for
from connector.errors import InvalidRequest
from connector.negotiation.dsp import event_message
from tests.unit.negotiation.test_dsp import VECTORS, registry

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"DSP vectors not found at {VECTORS}")

REQUEST = "negotiation/example/contract-request-message.json"
BUNDLED = resources.files("connector.dsp") / "resources"
SERVED = (
    "CatalogRequestMessage",
    "DatasetRequestMessage",
    "ContractRequestMessage",
    "ContractNegotiationTerminationMessage",
    "ContractNegotiationEventMessage",
    "ContractAgreementVerificationMessage",
    "ContractAgreementMessage",
    # A tds consumer reads the provider's answer to its request as this.
    "ContractNegotiation",
    "TransferRequestMessage",
    "TransferStartMessage",
    "TransferCompletionMessage",
    "TransferSuspensionMessage",
    "TransferTerminationMessage",
    "TransferProcess",
)


def examples(types: tuple[str, ...] | None = None) -> list[Any]:
    if not VECTORS.is_dir():
        return []
    found = []
    for path in sorted(VECTORS.rglob("example/*.json")):
        body = json.loads(path.read_text())
        if "@type" in body and (types is None or body["@type"] in types):
            found.append(pytest.param(body, id=str(path.relative_to(VECTORS))))
    return found


@pytest.mark.parametrize("message", examples(SERVED))
def test_every_example_request_the_binding_serves_is_accepted(message: dict[str, Any]) -> None:
    read = read_message(message, message["@type"])
    assert read["@type"] == message["@type"]
    assert read["@context"] == CONTEXT


@pytest.mark.parametrize("message", examples())
def test_every_example_message_compacts_to_its_schema(message: dict[str, Any]) -> None:
    read_message(message, message["@type"])


def test_bundled_artefacts_are_the_specifications() -> None:
    for path in VECTORS.rglob("*"):
        if path.is_file() and "example" not in path.parts:
            bundled = BUNDLED / str(path.relative_to(VECTORS))
            assert bundled.read_text() == path.read_text(), path


def test_another_compaction_reads_the_same() -> None:
    message = json.loads(
        (VECTORS / "negotiation/example/contract-request-message.json").read_text()
    )
    renamed = {
        "@context": [*CONTEXT, {"d": "https://w3id.org/dspace/2025/1/"}],
        **{k: v for k, v in message.items() if k not in ("@context", "consumerPid")},
        "d:consumerPid": {"@id": message["consumerPid"]},
    }
    assert read_message(renamed, "ContractRequestMessage") == read_message(
        message, "ContractRequestMessage"
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "JSON object"),
        ({"@type": "CatalogRequestMessage"}, "no @context"),
        ({"@context": ["https://example.org/ctx.jsonld"], "@type": "X"}, "resolves"),
        ({"@context": "https://example.org/ctx.jsonld", "@type": "X"}, "resolves"),
        ({"@context": CONTEXT, "@type": "ContractOfferMessage"}, "takes CatalogRequestMessage"),
        ({"@context": CONTEXT, "@type": ["CatalogRequestMessage", "Catalog"]}, "@type is"),
        ({"@context": CONTEXT, "@type": "CatalogRequestMessage", "@id": 7}, "JSON-LD"),
    ],
)
def test_refused_before_any_handler(body: Any, fragment: str) -> None:
    with pytest.raises(InvalidRequest, match=fragment):
        read_message(body, "CatalogRequestMessage")


def test_schema_failure_names_the_field() -> None:
    message = json.loads(
        (VECTORS / "negotiation/example/contract-request-message.json").read_text()
    )
    del message["offer"]
    with pytest.raises(InvalidRequest, match=r"fails its DSP 2025-1 schema: .*offer"):
        read_message(message, "ContractRequestMessage")


def test_what_is_read_does_not_depend_on_what_was_read_before() -> None:
    # pyld keeps the DSP context between messages; the scoped contexts that import the
    # ODRL profile must not leak into one another through that cache.
    paths = [
        "negotiation/example/contract-request-message.json",
        "negotiation/example/contract-agreement-message.json",
        "negotiation/example/contract-offer-message.json",
        "catalog/example/catalog.json",
    ]
    messages = [json.loads((VECTORS / p).read_text()) for p in paths]
    first = [read_message(m, m["@type"]) for m in messages]
    for order in (messages[::-1], messages[1:] + messages[:1]):
        for m in order:
            assert read_message(m, m["@type"]) == first[messages.index(m)]


def broken(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message less each of its fields, and with each field a wrong kind of value,
    one change at a time (at the top and one level down)."""
    variants: list[dict[str, Any]] = []
    for key, value in message.items():
        if key == "@context":
            continue
        variants.append({k: v for k, v in message.items() if k != key})
        for wrong in (7, "x", [], {}, None):
            if type(wrong) is not type(value):
                variants.append({**message, key: wrong})
        if isinstance(value, dict):
            for inner in value:
                variants.append({**message, key: {k: v for k, v in value.items() if k != inner}})
                variants.append({**message, key: {**value, inner: 7}})
    return variants


@pytest.mark.parametrize("message", examples(tuple(_SCHEMAS)))
def test_the_compiled_validator_agrees_with_jsonschema(message: dict[str, Any]) -> None:
    # The binding validates with jsonschema-rs (compiled once per schema); the reference
    # implementation must reach the same verdict on every example and every breakage of it.
    jsonschema = pytest.importorskip("jsonschema")
    kind = str(message["@type"])
    schema = schema_for(kind)
    reference = jsonschema.Draft201909Validator(
        json.loads(
            (BUNDLED / _SCHEMAS[kind]).read_text().replace("#definitions/", "#/definitions/")
        ),
        registry=registry(),
    )
    variants = [message, *broken(message)]
    verdicts = [(schema.is_valid(v), reference.is_valid(v)) for v in variants]
    assert [a for a, _ in verdicts] == [b for _, b in verdicts]
    assert any(not a for a, _ in verdicts[1:])  # some breakage is refused, by both


def read_uncached(message: dict[str, Any]) -> dict[str, Any]:
    """What pyld makes of a message from the published contexts as they are (the ODRL
    profile ``@import``ed by pyld itself), with nothing kept from any other operation."""

    def load(url: str, options: Any = None) -> dict[str, Any]:
        return {"contextUrl": None, "documentUrl": url, "document": _bundled(url)}

    def options() -> dict[str, Any]:
        return {"documentLoader": load, "contextResolver": ContextResolver(LRUCache(100), load)}

    compacted = jsonld.compact(jsonld.expand(message, options()), CONTEXT_URL, options())
    return {**compacted, "@context": CONTEXT}


def test_the_processed_context_reads_as_pyld_uncached() -> None:
    # The DSP context is served with its ODRL imports resolved once and kept processed
    # between messages: every example, in any order, reads as pyld reads it afresh.
    messages = [m.values[0] for m in examples(SERVED)]
    assert len(messages) > 10
    expected = [read_uncached(m) for m in messages]
    for order in (range(len(messages)), reversed(range(len(messages)))):
        for i in order:
            m = messages[i]
            assert read_message(m, m["@type"]) == expected[i], m["@type"]


def test_a_term_of_another_scope_is_not_read() -> None:
    # DSP 2025-1 context: callbackAddress is a term of the request's and the offer's
    # scopes only. In an agreement it is no term at all, and is dropped on expansion —
    # whatever message was read before (pyld's own @import leaked it into every scope).
    agreement = json.loads(
        (VECTORS / "negotiation/example/contract-agreement-message.json").read_text()
    )
    request = json.loads(
        (VECTORS / "negotiation/example/contract-request-message_initial.json").read_text()
    )
    agreement["callbackAddress"] = "https://elsewhere.example/callback"
    assert "callbackAddress" in read_message(request, "ContractRequestMessage")
    assert "callbackAddress" not in read_message(agreement, "ContractAgreementMessage")


@pytest.mark.parametrize(
    "message",
    [
        event_message("urn:tds:process:p1", "urn:tds:process:c1", "FINALIZED"),
        {
            "@context": CONTEXT,
            "@type": "ContractNegotiation",
            "providerPid": "urn:tds:process:p1",
            "consumerPid": "urn:tds:process:c1",
            "state": "FINALIZED",
        },
    ],
    ids=["event", "negotiation"],
)
def test_a_type_scoped_context_is_processed_once(
    message: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A type-scoped context does not propagate; pyld processed it on a fresh clone of the
    # active context for every message, so it never found it processed before. Read again
    # (other process ids), the message defines no term, and reads as pyld reads it afresh.
    read_message(message, str(message["@type"]))
    again = {**message, "providerPid": "urn:tds:process:p2", "consumerPid": "urn:tds:process:c2"}
    expected = read_uncached(again)
    defined: list[str] = []
    create = jsonld.JsonLdProcessor._create_term_definition

    def counted(
        self: Any, active_ctx: Any, local_ctx: Any, term: str, *args: Any, **kw: Any
    ) -> Any:
        defined.append(term)
        return create(self, active_ctx, local_ctx, term, *args, **kw)

    monkeypatch.setattr(jsonld.JsonLdProcessor, "_create_term_definition", counted)
    assert read_message(again, str(message["@type"])) == expected
    assert defined == []
