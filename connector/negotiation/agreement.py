"""Contract agreements: canonical JSON, signed by the provider, countersigned by the consumer.

Both signatures verify offline against the directory keys. Nanosecond times exceed I-JSON's
integer range, so the signed form carries them (and any other integer outside it) as
decimal strings; ``Agreement`` holds them as integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.errors import VerificationError

__all__ = [
    "Agreement",
    "ParsedAgreement",
    "countersign_agreement",
    "countersigned_agreement",
    "parse_agreement",
    "parsed_agreement",
    "revocation_terms",
    "sign_agreement",
    "verify_agreement",
    "verify_provider_signature",
    "verify_returned_agreement",
    "verify_stored_agreement",
]

_MAX = 2**53 - 1
_NS_FIELDS = ("valid_from_ns", "valid_until_ns")


def _to_ijson(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -_MAX <= value <= _MAX:
        return str(value)
    if isinstance(value, dict):
        return {k: _to_ijson(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_ijson(v) for v in value]
    return value


def _from_ijson(value: Any) -> Any:
    """Integers back from the decimal strings of ``*_ns`` keys."""
    if isinstance(value, dict):
        return {
            k: (
                int(v)
                if k.endswith("_ns") and isinstance(v, str) and v.lstrip("-").isdigit()
                else _from_ijson(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_from_ijson(v) for v in value]
    return value


@dataclass(frozen=True)
class Agreement:
    """The terms both parties signed."""

    id: str
    provider: str
    consumer: str
    product: str
    offer: str
    purpose: str
    valid_from_ns: int
    valid_until_ns: int
    max_transfers: int
    max_bytes: int
    policy_revision: str
    provider_pid: str
    consumer_pid: str
    issued_ms: int
    obligations: dict[str, Any] = field(default_factory=dict)
    permitted_fields: tuple[str, ...] | None = None
    masks: dict[str, Any] = field(default_factory=dict)
    registration_code: str = ""
    delivery: tuple[str, ...] = ("copy",)
    """How the product may be delivered under this agreement (the offer's modes)."""
    compute: dict[str, Any] | None = None
    """The offer's compute rules (``ComputeRules.to_dict``): what the consumer may ask."""
    max_messages: int = 0
    """For streams: messages delivered under the agreement in all (0: no limit)."""
    per_period: dict[str, Any] | None = None
    """For streams: ``{"period", "max_messages", "max_bytes"}`` limits per hour or day
    (``PeriodLimits`` as a dict; ``None``: none)."""

    def payload(self) -> bytes:
        """The canonical JSON both parties sign."""
        # Field by field rather than ``asdict``, whose deep copy was most of the cost; the
        # terms are copied by ``_to_ijson`` all the same.
        terms = {f.name: getattr(self, f.name) for f in _FIELDS}
        # The delivery terms are signed only when they differ from a plain copy, so every
        # agreement signed before they existed keeps its exact payload and verifies.
        if self.delivery == ("copy",) and self.compute is None:
            del terms["delivery"], terms["compute"]
        # Likewise the stream limits, signed only when the offer sets them.
        if not self.max_messages:
            del terms["max_messages"]
        if self.per_period is None:
            del terms["per_period"]
        return canonical_json({"tds_agreement": 1, **_to_ijson(terms)})


_FIELDS = fields(Agreement)


def sign_agreement(agreement: Agreement, provider_key: ed25519.Ed25519PrivateKey) -> str:
    """The provider's signed agreement."""
    return jws.sign(agreement.payload(), provider_key, signer=agreement.provider, role="provider")


def parse_agreement(signed: str) -> Agreement:
    """The agreement's terms, nothing verified (for display and routing only)."""
    payload = jws.payload_of(signed, "agreement")
    if not isinstance(payload, dict) or payload.pop("tds_agreement", None) != 1:
        raise VerificationError("payload is not a tds agreement")
    values = _from_ijson(payload)
    for name in ("permitted_fields", "delivery"):
        if isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    try:
        agreement = Agreement(**values)
    except TypeError as exc:
        raise VerificationError(f"agreement has wrong fields: {exc}") from None
    if agreement.payload() != jws.payload_bytes(signed, "agreement"):
        raise VerificationError("agreement payload is not in its canonical signed form")
    return agreement


@dataclass(frozen=True)
class ParsedAgreement:
    """A signed agreement's terms (``parse_agreement``, nothing verified) with the exact
    text they were parsed from: handed on with it, so that what verifies the text next
    need not parse it again, and can tell the terms are that text's (``terms_of``)."""

    signed: str
    agreement: Agreement

    def terms_of(self, signed: str) -> Agreement | None:
        """The terms, if parsed from ``signed`` (to the byte)."""
        return self.agreement if signed == self.signed else None


def parsed_agreement(signed: str) -> ParsedAgreement:
    """``parse_agreement(signed)``, kept with ``signed``."""
    return ParsedAgreement(signed, parse_agreement(signed))


def revocation_terms(signed: str) -> dict[str, Any]:
    """What a signed revocation says (reason, and ``consent_withdrawn`` when it follows
    a consent withdrawal); nothing verified — it was verified when it was received."""
    try:
        body = jws.payload_of(signed, "revocation")
    except VerificationError:
        return {}
    return body if isinstance(body, dict) else {}


def _parties(agreement: Agreement) -> tuple[tuple[str, str], tuple[str, str]]:
    return (agreement.provider, "provider"), (agreement.consumer, "consumer")


def verify_provider_signature(signed: str, keys: jws.KeyLookup) -> Agreement:
    """Verify an agreement as the provider sent it (one signature)."""
    agreement = parse_agreement(signed)
    jws.verify_signed(signed, keys, first=_parties(agreement)[0], what="agreement")
    return agreement


def countersign_agreement(
    signed: str, consumer_key: ed25519.Ed25519PrivateKey, keys: jws.KeyLookup
) -> str:
    """Verify the provider's signature and add the consumer's countersignature."""
    return countersigned_agreement(signed, consumer_key, keys)[1]


def countersigned_agreement(
    signed: str,
    consumer_key: ed25519.Ed25519PrivateKey,
    keys: jws.KeyLookup,
    *,
    parsed: ParsedAgreement | None = None,
) -> tuple[Agreement, str]:
    """``countersign_agreement``, with the agreement's terms (parsed and verified once).

    ``parsed``: the terms as already parsed, used only if parsed from ``signed`` itself;
    the provider's signature is verified over ``signed`` all the same."""
    agreement = parsed.terms_of(signed) if parsed is not None else None
    if agreement is None:
        agreement = parse_agreement(signed)
    first, second = _parties(agreement)
    countersigned = jws.countersign(
        signed, consumer_key, keys, first=first, second=second, what="agreement"
    )
    return agreement, countersigned


def verify_returned_agreement(
    signed: str, sent: str, keys: jws.KeyLookup, *, provider: str, consumer: str
) -> None:
    """The provider's check of the agreement it ``sent`` to ``consumer``, back with the
    consumer's countersignature: the same payload and provider signature, to the byte, and
    the consumer's valid signature binding it (nothing to parse: the terms are the ones
    sent)."""
    jws.verify_countersignature(
        signed,
        sent,
        keys,
        first=(provider, "provider"),
        second=(consumer, "consumer"),
        what="agreement",
    )


def verify_agreement(signed: str, keys: jws.KeyLookup) -> Agreement:
    """Verify both signatures offline; return the agreement."""
    agreement = parse_agreement(signed)
    first, second = _parties(agreement)
    jws.verify_countersigned(signed, keys, first=first, second=second, what="agreement")
    return agreement


def verify_stored_agreement(
    signed: str,
    keys: jws.KeyLookup,
    *,
    agreement_id: str,
    provider: str,
    consumer: str,
    countersigned: bool = True,
) -> Agreement:
    """An agreement as this connector stored it, verified again before it is used.

    A row is only as trustworthy as the database: one edited to name another product,
    limit or party must not be acted on. Its signatures must verify (the provider's, and
    the consumer's countersignature once ``countersigned``), and it must be the agreement
    ``agreement_id`` between ``provider`` and ``consumer`` (a validly signed agreement
    copied from another row is refused too). ``VerificationError`` names the agreement
    and why, never the parties another row's agreement names (the message goes to the
    caller).
    """
    parties = (provider, "provider"), (consumer, "consumer")
    try:
        agreement = parse_agreement(signed)
        # The parties are checked before any key is looked up: the keys are the expected
        # parties', never ones the stored text names.
        if (agreement.id, agreement.provider, agreement.consumer) != (
            agreement_id,
            provider,
            consumer,
        ):
            raise VerificationError("it is not this agreement between these parties")
        if countersigned:
            jws.verify_countersigned(
                signed, keys, first=parties[0], second=parties[1], what="agreement"
            )
        else:
            jws.verify_signed(signed, keys, first=parties[0], what="agreement")
    except VerificationError as exc:
        raise VerificationError(
            f"the stored agreement {agreement_id} does not verify ({exc}); nothing is done "
            "under it, and the refusal is logged for the provider's administrator"
        ) from None
    return agreement
