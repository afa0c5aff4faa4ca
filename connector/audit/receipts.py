"""Transfer receipts: canonical JSON signed by the consumer, countersigned by the provider.

A signed receipt is a JWS in the general JSON serialisation (RFC 7515 §7.2.1) with one
EdDSA signature per party over the same payload. Each protected header names the signer
(``kid``: participant id) and its part (``tds_role``); the provider's header also binds the
consumer's signature (``tds_countersigns``: base64url SHA-256 of it), so the provider's
signature says "I saw the consumer's signed receipt", not only "I agree with the payload".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.canonical import canonical_json, parse_canonical
from connector.errors import InvalidRequest, VerificationError

__all__ = [
    "Receipt",
    "countersign_receipt",
    "parse_receipt",
    "sign_receipt",
    "verify_receipt",
]

KeyLookup = Callable[[str], ed25519.Ed25519PublicKey]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise VerificationError(f"receipt {what} is not base64url") from None


@dataclass(frozen=True)
class Receipt:
    """What both parties attest about one completed transfer."""

    agreement: str
    transfer: str
    product: str
    provider: str
    consumer: str
    size: int
    sha256: str
    started_ms: int
    ended_ms: int
    provider_log_index: int
    consumer_log_index: int

    def payload(self) -> bytes:
        """The canonical JSON both parties sign."""
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise InvalidRequest("receipt sha256 must be 64 lower-case hex digits")
        if self.size < 0 or self.ended_ms < self.started_ms:
            raise InvalidRequest("receipt size must not be negative nor end before it starts")
        return canonical_json({"tds_receipt": 1, **asdict(self)})


def _signature(
    payload_b64: str, header: dict[str, Any], key: ed25519.Ed25519PrivateKey
) -> dict[str, str]:
    protected = _b64(canonical_json(header))
    sig = key.sign(f"{protected}.{payload_b64}".encode())
    return {"protected": protected, "signature": _b64(sig)}


def sign_receipt(receipt: Receipt, consumer_key: ed25519.Ed25519PrivateKey) -> str:
    """The consumer's signed receipt (JWS JSON with one signature)."""
    payload_b64 = _b64(receipt.payload())
    header = {"alg": "EdDSA", "kid": receipt.consumer, "tds_role": "consumer"}
    return json.dumps(
        {"payload": payload_b64, "signatures": [_signature(payload_b64, header, consumer_key)]},
        separators=(",", ":"),
    )


def countersign_receipt(
    signed: str, provider_key: ed25519.Ed25519PrivateKey, keys: KeyLookup
) -> str:
    """Verify the consumer's signature, then add the provider's countersignature."""
    receipt, doc = _parse(signed)
    if len(doc["signatures"]) != 1:
        raise VerificationError("a receipt to countersign carries exactly the consumer's signature")
    _verify_one(doc["payload"], doc["signatures"][0], receipt.consumer, "consumer", keys)
    consumer_sig = doc["signatures"][0]["signature"]
    header = {
        "alg": "EdDSA",
        "kid": receipt.provider,
        "tds_role": "provider",
        "tds_countersigns": _b64(hashlib.sha256(consumer_sig.encode()).digest()),
    }
    doc["signatures"].append(_signature(doc["payload"], header, provider_key))
    return json.dumps(doc, separators=(",", ":"))


def _parse(signed: str) -> tuple[Receipt, dict[str, Any]]:
    try:
        doc = json.loads(signed)
    except ValueError:
        raise VerificationError("receipt is not JSON") from None
    if (
        not isinstance(doc, dict)
        or set(doc) != {"payload", "signatures"}
        or not isinstance(doc["signatures"], list)
        or not isinstance(doc["payload"], str)
    ):
        raise VerificationError("receipt must be a JWS JSON object with payload and signatures")
    payload = parse_canonical(_unb64(doc["payload"], "payload"), "receipt payload")
    if not isinstance(payload, dict) or payload.pop("tds_receipt", None) != 1:
        raise VerificationError("payload is not a tds receipt")
    try:
        receipt = Receipt(**payload)
    except TypeError as exc:
        raise VerificationError(f"receipt payload has wrong fields: {exc}") from None
    return receipt, doc


def _verify_one(
    payload_b64: str, sig: Any, signer: str, role: str, keys: KeyLookup
) -> dict[str, Any]:
    if not isinstance(sig, dict) or set(sig) != {"protected", "signature"}:
        raise VerificationError("receipt signature must have protected and signature only")
    header = parse_canonical(_unb64(sig["protected"], "header"), "receipt header")
    if not isinstance(header, dict) or header.get("alg") != "EdDSA":
        raise VerificationError("receipt signatures must use EdDSA")
    if header.get("kid") != signer or header.get("tds_role") != role:
        raise VerificationError(f"receipt signature is not the {role}'s ({signer})")
    try:
        keys(signer).verify(
            _unb64(sig["signature"], "signature"), f"{sig['protected']}.{payload_b64}".encode()
        )
    except InvalidSignature:
        raise VerificationError(f"the {role}'s signature on the receipt does not verify") from None
    return header


def verify_receipt(signed: str, keys: KeyLookup) -> Receipt:
    """Verify both signatures and the countersignature binding; return the receipt."""
    receipt, doc = _parse(signed)
    sigs = doc["signatures"]
    if len(sigs) != 2:
        raise VerificationError(
            "a complete receipt carries the consumer's and provider's signatures"
        )
    _verify_one(doc["payload"], sigs[0], receipt.consumer, "consumer", keys)
    header = _verify_one(doc["payload"], sigs[1], receipt.provider, "provider", keys)
    bound = _b64(hashlib.sha256(sigs[0]["signature"].encode()).digest())
    if header.get("tds_countersigns") != bound:
        raise VerificationError(
            "the provider's signature does not countersign this consumer signature"
        )
    return receipt


def parse_receipt(signed: str) -> Receipt:
    """The receipt's payload without verifying signatures (for display only)."""
    return _parse(signed)[0]
