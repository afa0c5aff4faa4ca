"""Window receipts of a stream: the consumer signs each window, the provider countersigns.

The payload is canonical JSON of the window's content (:class:`connector.sources.windows.
Window`: index, sequence range, count, bytes, start and end chain heads) with the
agreement, product and both parties, signed as transfer receipts are (a two-party JWS,
:mod:`connector.audit.jws`): the provider's signature binds the consumer's.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.errors import VerificationError
from connector.sources.windows import Window

__all__ = [
    "WindowReceipt",
    "countersign_window",
    "parse_window",
    "sign_window",
    "verify_window",
    "verify_window_countersignature",
]

_WHAT = "window receipt"


@dataclass(frozen=True)
class WindowReceipt:
    """What both parties attest about one window of a stream."""

    agreement: str
    product: str
    provider: str
    consumer: str
    window: Window

    def payload(self) -> bytes:
        """The canonical JSON both parties sign."""
        return canonical_json(
            {
                "tds_window_receipt": 1,
                "agreement": self.agreement,
                "product": self.product,
                "provider": self.provider,
                "consumer": self.consumer,
                **self.window.content(),
            }
        )

    @property
    def signers(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """(consumer, provider) as (participant, role)."""
        return (self.consumer, "consumer"), (self.provider, "provider")


def sign_window(receipt: WindowReceipt, consumer_key: ed25519.Ed25519PrivateKey) -> str:
    """The consumer's signed window receipt."""
    return jws.sign(receipt.payload(), consumer_key, signer=receipt.consumer, role="consumer")


def parse_window(signed: str) -> WindowReceipt:
    """The receipt's payload without verifying signatures."""
    payload = jws.payload_of(signed, _WHAT)
    if not isinstance(payload, dict) or payload.pop("tds_window_receipt", None) != 1:
        raise VerificationError("payload is not a tds window receipt")
    try:
        parties = {k: payload.pop(k) for k in ("agreement", "product", "provider", "consumer")}
        window = Window(**payload)
    except (KeyError, TypeError) as exc:
        raise VerificationError(f"window receipt payload has wrong fields: {exc}") from None
    if not all(isinstance(v, str) for v in parties.values()):
        raise VerificationError("window receipt parties must be strings")
    return WindowReceipt(window=window, **parties)


def countersign_window(
    signed: str, provider_key: ed25519.Ed25519PrivateKey, keys: jws.KeyLookup
) -> str:
    """Verify the consumer's signature, then add the provider's countersignature."""
    first, second = parse_window(signed).signers
    return jws.countersign(signed, provider_key, keys, first=first, second=second, what=_WHAT)


def verify_window(signed: str, keys: jws.KeyLookup) -> WindowReceipt:
    """Verify both signatures and the binding; return the receipt (auditors, reconcile)."""
    receipt = parse_window(signed)
    first, second = receipt.signers
    jws.verify_countersigned(signed, keys, first=first, second=second, what=_WHAT)
    return receipt


def verify_window_countersignature(signed: str, original: str, keys: jws.KeyLookup) -> None:
    """The consumer's check of what came back for the receipt it sent."""
    first, second = parse_window(original).signers
    jws.verify_countersignature(signed, original, keys, first=first, second=second, what=_WHAT)
