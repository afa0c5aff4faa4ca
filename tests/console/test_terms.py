"""The contracts page's reading of a stored agreement: the same terms ``parse_agreement``
reads, without serialising the terms again, and a clear error for what is not one."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.console.backend import agreement_terms
from connector.negotiation.agreement import (
    Agreement,
    countersign_agreement,
    parse_agreement,
    sign_agreement,
)

KEYS = {"gov": ed25519.Ed25519PrivateKey.generate(), "ent": ed25519.Ed25519PrivateKey.generate()}


def signed(**terms: object) -> str:
    agreement = Agreement(
        **{
            "id": "ag-1",
            "provider": "gov",
            "consumer": "ent",
            "product": "traffic",
            "offer": "o1",
            "purpose": "research",
            "valid_from_ns": 0,
            "valid_until_ns": 1_900_000_000 * 10**9,
            "max_transfers": 3,
            "max_bytes": 10**12,
            "policy_revision": "r1",
            "provider_pid": "p" * 32,
            "consumer_pid": "c" * 32,
            "issued_ms": 1,
            **terms,
        }  # type: ignore[arg-type]
    )
    first = sign_agreement(agreement, KEYS["gov"])
    return countersign_agreement(first, KEYS["ent"], lambda who: KEYS[who].public_key())


def expected(text: str) -> dict[str, object]:
    """What the page showed when it read the agreement through ``parse_agreement``."""
    a = parse_agreement(text)
    return {
        "valid_until_ms": a.valid_until_ns // 10**6,
        "max_transfers": a.max_transfers,
        "max_bytes": a.max_bytes,
        "max_messages": a.max_messages,
        "delivery": list(a.delivery),
        "obligations": json.dumps(a.obligations, ensure_ascii=False, sort_keys=True),
        "registration_code": a.registration_code,
        "signers": [{"who": "gov", "role": "provider"}, {"who": "ent", "role": "consumer"}],
    }


def test_terms_are_those_parse_agreement_reads() -> None:
    plain = signed()
    full = signed(
        obligations={"delete_after_ns": 2**62, "notify": ["城市 gov"], "nested": {"x_ns": 2**60}},
        registration_code="CITY-2026-ABCDEF0123",
        delivery=("copy", "stream"),
        max_messages=500,
    )
    for text in (plain, full):
        assert agreement_terms(text) == expected(text)
    assert agreement_terms(full)["obligations"].count(str(2**62)) == 1  # a number, not text


def test_what_is_not_an_agreement_shows_as_an_error() -> None:
    payload = base64.urlsafe_b64encode(b'{"tds_receipt":1}').decode().rstrip("=")
    for text in ("", "not json", json.dumps({"payload": payload, "signatures": []}), "{}"):
        shown = agreement_terms(text)
        assert set(shown) == {"error"}, text
