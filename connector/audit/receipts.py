"""Transfer receipts: canonical JSON signed by the consumer, countersigned by the provider.

A signed receipt is a two-party JWS document (``connector.audit.jws``): the consumer signs
the payload, the provider countersigns it and binds the consumer's signature, so the
provider's signature says "I saw the consumer's signed receipt".
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.errors import InvalidRequest, VerificationError

__all__ = [
    "Receipt",
    "countersign_receipt",
    "parse_receipt",
    "receipt_id",
    "sign_receipt",
    "verify_receipt",
]

KeyLookup = jws.KeyLookup


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

    @property
    def signers(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """(consumer, provider) as (participant, role)."""
        return (self.consumer, "consumer"), (self.provider, "provider")


def sign_receipt(receipt: Receipt, consumer_key: ed25519.Ed25519PrivateKey) -> str:
    """The consumer's signed receipt."""
    return jws.sign(receipt.payload(), consumer_key, signer=receipt.consumer, role="consumer")


def parse_receipt(signed: str) -> Receipt:
    """The receipt's payload without verifying signatures (for display only)."""
    payload = jws.payload_of(signed, "receipt")
    if not isinstance(payload, dict) or payload.pop("tds_receipt", None) != 1:
        raise VerificationError("payload is not a tds receipt")
    try:
        return Receipt(**payload)
    except TypeError as exc:
        raise VerificationError(f"receipt payload has wrong fields: {exc}") from None


def countersign_receipt(
    signed: str, provider_key: ed25519.Ed25519PrivateKey, keys: KeyLookup
) -> str:
    """Verify the consumer's signature, then add the provider's countersignature."""
    first, second = parse_receipt(signed).signers
    return jws.countersign(signed, provider_key, keys, first=first, second=second, what="receipt")


def verify_receipt(signed: str, keys: KeyLookup) -> Receipt:
    """Verify both signatures and the countersignature binding; return the receipt."""
    receipt = parse_receipt(signed)
    first, second = receipt.signers
    jws.verify_countersigned(signed, keys, first=first, second=second, what="receipt")
    return receipt


def receipt_id(signed: str) -> str:
    """A receipt's id: SHA-256 of its signed payload, the same for both parties' copies."""
    return hashlib.sha256(jws.payload_bytes(signed, "receipt")).hexdigest()
