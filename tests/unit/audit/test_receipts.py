"""Receipts: consumer signs, provider countersigns, anything else is refused."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.receipts import Receipt, countersign_receipt, sign_receipt, verify_receipt
from connector.errors import InvalidRequest, VerificationError

KEYS = {p: ed25519.Ed25519PrivateKey.generate() for p in ("prov", "cons", "mallory")}
RECEIPT = Receipt(
    agreement="ag-1",
    transfer="tr-1",
    product="p",
    provider="prov",
    consumer="cons",
    size=10,
    sha256="0f" * 32,
    started_ms=1,
    ended_ms=2,
    provider_log_index=3,
    consumer_log_index=4,
)


def public(p: str) -> ed25519.Ed25519PublicKey:
    return KEYS[p].public_key()


def complete() -> str:
    return countersign_receipt(sign_receipt(RECEIPT, KEYS["cons"]), KEYS["prov"], public)


def test_round_trip() -> None:
    assert verify_receipt(complete(), public) == RECEIPT


def test_consumer_only_receipt_is_not_complete() -> None:
    with pytest.raises(VerificationError, match="consumer's and provider's"):
        verify_receipt(sign_receipt(RECEIPT, KEYS["cons"]), public)


def test_wrong_keys_are_refused() -> None:
    with pytest.raises(VerificationError, match="consumer's signature"):
        countersign_receipt(sign_receipt(RECEIPT, KEYS["mallory"]), KEYS["prov"], public)
    forged = countersign_receipt(sign_receipt(RECEIPT, KEYS["cons"]), KEYS["mallory"], public)
    with pytest.raises(VerificationError, match="provider's signature"):
        verify_receipt(forged, public)


def test_altered_payload_is_refused() -> None:
    doc = json.loads(complete())
    payload = json.loads(base64.urlsafe_b64decode(doc["payload"] + "=="))
    payload["size"] = 11
    doc["payload"] = (
        base64.urlsafe_b64encode(
            json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(VerificationError):
        verify_receipt(json.dumps(doc), public)


def test_countersignature_is_bound_to_the_consumer_signature() -> None:
    one = json.loads(complete())
    other = json.loads(
        countersign_receipt(sign_receipt(RECEIPT, KEYS["cons"]), KEYS["prov"], public)
    )
    # Ed25519 is deterministic, so build a second valid consumer signature over another header.
    one["signatures"][1] = other["signatures"][1]
    assert verify_receipt(json.dumps(one), public) == RECEIPT  # same consumer sig: still bound
    one["signatures"][0]["signature"] = other["signatures"][0]["signature"][::-1]
    with pytest.raises(VerificationError):
        verify_receipt(json.dumps(one), public)


def test_bad_receipts_are_invalid_requests() -> None:
    with pytest.raises(InvalidRequest):
        replace(RECEIPT, sha256="xyz").payload()
    with pytest.raises(InvalidRequest):
        replace(RECEIPT, ended_ms=0).payload()
    with pytest.raises(VerificationError):
        verify_receipt("not json", public)
