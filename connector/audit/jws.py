"""Documents signed by two parties: JWS general JSON serialisation, EdDSA, countersigned.

The first party signs the payload; the second verifies that signature and signs the same
payload with a protected header that binds the first signature (``tds_countersigns``:
base64url SHA-256 of it). Each protected header names its signer (``kid``: participant
id) and part (``tds_role``). Receipts (consumer, then provider) and agreements (provider,
then consumer) are such documents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.canonical import canonical_json, parse_canonical
from connector.errors import VerificationError

__all__ = [
    "KeyLookup",
    "countersign",
    "payload_bytes",
    "payload_of",
    "sign",
    "verify_countersignature",
    "verify_countersigned",
    "verify_signed",
]

KeyLookup = Callable[[str], ed25519.Ed25519PublicKey]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise VerificationError(f"{what} is not base64url") from None


def _signature(
    payload_b64: str, header: dict[str, Any], key: ed25519.Ed25519PrivateKey
) -> dict[str, str]:
    protected = _b64(canonical_json(header))
    return {
        "protected": protected,
        "signature": _b64(key.sign(f"{protected}.{payload_b64}".encode())),
    }


def _document(signed: str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(signed)
    except ValueError:
        raise VerificationError(f"{what} is not JSON") from None
    if (
        not isinstance(doc, dict)
        or set(doc) != {"payload", "signatures"}
        or not isinstance(doc["signatures"], list)
        or not isinstance(doc["payload"], str)
    ):
        raise VerificationError(f"{what} must be a JWS JSON object with payload and signatures")
    return doc


def sign(payload: bytes, key: ed25519.Ed25519PrivateKey, *, signer: str, role: str) -> str:
    """The first party's signed document."""
    payload_b64 = _b64(payload)
    header = {"alg": "EdDSA", "kid": signer, "tds_role": role}
    return json.dumps(
        {"payload": payload_b64, "signatures": [_signature(payload_b64, header, key)]},
        separators=(",", ":"),
    )


def payload_of(signed: str, what: str) -> Any:
    """The canonical JSON payload, parsed (nothing verified)."""
    doc = _document(signed, what)
    return parse_canonical(_unb64(doc["payload"], f"{what} payload"), f"{what} payload")


def payload_bytes(signed: str, what: str) -> bytes:
    """The exact payload bytes that were signed."""
    return _unb64(_document(signed, what)["payload"], f"{what} payload")


def _verify_one(
    payload_b64: str, sig: Any, signer: str, role: str, keys: KeyLookup, what: str
) -> dict[str, Any]:
    if not isinstance(sig, dict) or set(sig) != {"protected", "signature"}:
        raise VerificationError(f"{what} signature must have protected and signature only")
    header = parse_canonical(_unb64(sig["protected"], f"{what} header"), f"{what} header")
    if not isinstance(header, dict) or header.get("alg") != "EdDSA":
        raise VerificationError(f"{what} signatures must use EdDSA")
    if header.get("kid") != signer or header.get("tds_role") != role:
        raise VerificationError(f"{what} signature is not the {role}'s ({signer})")
    try:
        keys(signer).verify(
            _unb64(sig["signature"], f"{what} signature"),
            f"{sig['protected']}.{payload_b64}".encode(),
        )
    except InvalidSignature:
        raise VerificationError(f"the {role}'s signature on the {what} does not verify") from None
    return header


def countersign(
    signed: str,
    key: ed25519.Ed25519PrivateKey,
    keys: KeyLookup,
    *,
    first: tuple[str, str],
    second: tuple[str, str],
    what: str,
) -> str:
    """Verify the first party's signature, then add the second party's."""
    doc = _document(signed, what)
    if len(doc["signatures"]) != 1:
        raise VerificationError(f"a {what} to countersign carries exactly one signature")
    _verify_one(doc["payload"], doc["signatures"][0], *first, keys, what)
    bound = _b64(hashlib.sha256(doc["signatures"][0]["signature"].encode()).digest())
    header = {"alg": "EdDSA", "kid": second[0], "tds_role": second[1], "tds_countersigns": bound}
    doc["signatures"].append(_signature(doc["payload"], header, key))
    return json.dumps(doc, separators=(",", ":"))


def verify_signed(signed: str, keys: KeyLookup, *, first: tuple[str, str], what: str) -> None:
    """Verify a document carrying only the first party's signature."""
    doc = _document(signed, what)
    if len(doc["signatures"]) != 1:
        raise VerificationError(f"the {what} must carry exactly one signature here")
    _verify_one(doc["payload"], doc["signatures"][0], *first, keys, what)


def verify_countersigned(
    signed: str, keys: KeyLookup, *, first: tuple[str, str], second: tuple[str, str], what: str
) -> None:
    """Verify both signatures and that the second binds the first."""
    doc = _document(signed, what)
    sigs = doc["signatures"]
    if len(sigs) != 2:
        raise VerificationError(
            f"a complete {what} carries the {first[1]}'s and {second[1]}'s signatures"
        )
    _verify_one(doc["payload"], sigs[0], *first, keys, what)
    _verify_second(doc["payload"], sigs, keys, first=first, second=second, what=what)


def _verify_second(
    payload_b64: str,
    sigs: list[Any],
    keys: KeyLookup,
    *,
    first: tuple[str, str],
    second: tuple[str, str],
    what: str,
) -> None:
    """Verify the second signature and that it binds the first."""
    header = _verify_one(payload_b64, sigs[1], *second, keys, what)
    bound = _b64(hashlib.sha256(sigs[0]["signature"].encode()).digest())
    if header.get("tds_countersigns") != bound:
        raise VerificationError(
            f"the {second[1]}'s signature does not countersign this {first[1]} signature"
        )


def verify_countersignature(
    signed: str,
    original: str,
    keys: KeyLookup,
    *,
    first: tuple[str, str],
    second: tuple[str, str],
    what: str,
) -> None:
    """Verify a document the first party gets back countersigned, against the ``original``
    it signed and sent: the same payload and first signature, to the byte, and a valid
    second signature that binds it.

    For the first party only: its own signature was made here, so checking it is equal
    to what was sent proves as much as verifying it again (offline checks use
    ``verify_countersigned``).
    """
    doc, sent = _document(signed, what), _document(original, what)
    sigs = doc["signatures"]
    if len(sigs) != 2:
        raise VerificationError(f"a complete {what} carries two signatures")
    if doc["payload"] != sent["payload"] or sigs[0] != sent["signatures"][0]:
        raise VerificationError(f"the countersigned {what} differs from the one sent")
    _verify_second(doc["payload"], sigs, keys, first=first, second=second, what=what)
