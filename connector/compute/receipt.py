"""Computation receipts: canonical JSON signed by the provider, countersigned by the consumer.

The provider signs what it computed (the canonical query and its hash, the rules in force,
the source's state, the answer's SHA-256, groups suppressed, ε spent and left); the
consumer checks the answer it received against the receipt and countersigns, binding the
provider's signature (``connector.audit.jws``). Both parties log the countersigned receipt.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.errors import VerificationError

__all__ = [
    "WHAT",
    "ComputationReceipt",
    "countersign_computation",
    "parse_computation_receipt",
    "sign_computation",
    "verify_computation_receipt",
]

WHAT = "computation receipt"


@dataclass(frozen=True)
class ComputationReceipt:
    """What both parties attest about one answer."""

    agreement: str
    computation: str
    product: str
    provider: str
    consumer: str
    query: str
    """The canonical query text (what was computed, whatever form was asked)."""
    query_sha256: str
    rules_sha256: str
    source_state: str
    answer_sha256: str
    rows: int
    suppressed: int
    epsilon_spent: float
    """ε this answer spent."""
    epsilon_left: float
    """ε left of the agreement's budget after it (0 without differential privacy)."""
    delta: float
    computed_ms: int

    def payload(self) -> bytes:
        """The canonical JSON both parties sign."""
        return canonical_json({"tds_computation": 1, **asdict(self)})

    @property
    def signers(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """(provider, consumer) as (participant, role)."""
        return (self.provider, "provider"), (self.consumer, "consumer")


def sign_computation(receipt: ComputationReceipt, provider_key: ed25519.Ed25519PrivateKey) -> str:
    """The provider's signed receipt."""
    return jws.sign(receipt.payload(), provider_key, signer=receipt.provider, role="provider")


def parse_computation_receipt(signed: str) -> ComputationReceipt:
    """The receipt's payload, nothing verified (for display and matching only)."""
    payload: Any = jws.payload_of(signed, WHAT)
    if not isinstance(payload, dict) or payload.pop("tds_computation", None) != 1:
        raise VerificationError("payload is not a tds computation receipt")
    try:
        receipt = ComputationReceipt(**payload)
    except TypeError as exc:
        raise VerificationError(f"computation receipt has wrong fields: {exc}") from None
    if receipt.payload() != jws.payload_bytes(signed, WHAT):
        raise VerificationError("computation receipt is not in its canonical signed form")
    return receipt


def countersign_computation(
    signed: str, consumer_key: ed25519.Ed25519PrivateKey, keys: jws.KeyLookup
) -> str:
    """Verify the provider's signature, then add the consumer's countersignature."""
    first, second = parse_computation_receipt(signed).signers
    return jws.countersign(signed, consumer_key, keys, first=first, second=second, what=WHAT)


def verify_computation_receipt(signed: str, keys: jws.KeyLookup) -> ComputationReceipt:
    """Verify both signatures and the binding; return the receipt."""
    receipt = parse_computation_receipt(signed)
    first, second = receipt.signers
    jws.verify_countersigned(signed, keys, first=first, second=second, what=WHAT)
    return receipt


def answer_sha256(answer: bytes) -> str:
    """Hex SHA-256 of an answer's canonical JSON, as the receipt names it."""
    return hashlib.sha256(answer).hexdigest()
