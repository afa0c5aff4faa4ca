"""Every transfer process message tds sends validates against the shared DSP 2025-1
schemas and survives a receiver's JSON-LD processing with its tds profile properties
(``urn:tds:transferManifest``, ``urn:tds:signedReceipt``) intact; every example transfer
request the binding serves is read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connector.dsp.jsonld import read_message
from connector.dsp.transfers import (
    FORMAT,
    MANIFEST,
    SIGNED_RECEIPT,
    DataTokens,
    completion_message,
    process_message,
    request_message,
    start_message,
    suspension_message,
    termination_message,
)
from tests.unit.negotiation.test_dsp import VECTORS, validate

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"DSP vectors not found at {VECTORS}")

TID = "tr-" + "a" * 32
CID = "dspc-" + "b" * 32

SENT: list[tuple[str, dict[str, Any]]] = [
    ("TransferRequestMessage", request_message(CID, "ag-1", "https://a.example:8443")),
    ("TransferProcess", process_message(TID, CID, "STARTED")),
    (
        "TransferStartMessage",
        start_message(
            TID,
            CID,
            endpoint=f"https://gov.example:8443/transfers/urn:tds:process:{TID}/data",
            token="t0ken",
            expires_ms=1_700_000_000_000,
            manifest={"transfer_id": TID, "size": "12", "sha256": "0" * 64},
        ),
    ),
    ("TransferStartMessage", start_message(TID, CID)),
    ("TransferCompletionMessage", completion_message(TID, CID, "h.p.s")),
    ("TransferCompletionMessage", completion_message(TID, CID)),
    ("TransferTerminationMessage", termination_message(TID, CID, ["done"], code="cancelled")),
    ("TransferSuspensionMessage", suspension_message(TID, CID, ["later"])),
]
SCHEMAS = {
    "TransferRequestMessage": "transfer/transfer-request-message-schema.json",
    "TransferProcess": "transfer/transfer-process-schema.json",
    "TransferStartMessage": "transfer/transfer-start-message-schema.json",
    "TransferCompletionMessage": "transfer/transfer-completion-message-schema.json",
    "TransferTerminationMessage": "transfer/transfer-termination-message-schema.json",
    "TransferSuspensionMessage": "transfer/transfer-suspension-message-schema.json",
}


@pytest.mark.parametrize(
    ("kind", "message"), SENT, ids=[f"{k}-{i}" for i, (k, _) in enumerate(SENT)]
)
def test_transfer_messages_sent_validate_against_the_shared_schemas(
    kind: str, message: dict[str, Any]
) -> None:
    validate(message, SCHEMAS[kind])
    read = read_message(json.loads(json.dumps(message)), kind)
    for extension in (MANIFEST, SIGNED_RECEIPT):
        assert read.get(extension) == message.get(extension)
    if "dataAddress" in message:
        assert read["dataAddress"]["endpoint"] == message["dataAddress"]["endpoint"]
        props = read["dataAddress"]["endpointProperties"]
        assert {p["name"]: p["value"] for p in props}["authorization"] == "t0ken"


def test_transfer_request_example_is_read() -> None:
    example = json.loads((VECTORS / "transfer/example/transfer-request-message.json").read_text())
    read = read_message(example, "TransferRequestMessage")
    assert read["agreementId"] == example["agreementId"]


def test_transfer_request_format_term_round_trips() -> None:
    # The format is an IRI (@vocab): the bare term comes back resolved against pyld's
    # default base, which the provider takes back (connector.dsp.transfer).
    from pyld import jsonld

    read = read_message(request_message(CID, "ag-1", "https://a.example"), "TransferRequestMessage")
    assert read["format"].removeprefix(jsonld.DEFAULT_BASE_IRI) == FORMAT


def test_data_tokens_are_scoped_to_transfer_participant_and_expiry() -> None:
    tokens = DataTokens(b"k" * 32)
    token = tokens.issue(TID, "a", 1000)
    assert tokens.valid(token, TID, "a", 1000)
    assert not tokens.valid(token, TID, "b", 1000)
    assert not tokens.valid(token, "tr-" + "c" * 32, "a", 1000)
    assert not tokens.valid(token, TID, "a", 2000)
    assert not DataTokens(b"j" * 32).valid(token, TID, "a", 1000)
