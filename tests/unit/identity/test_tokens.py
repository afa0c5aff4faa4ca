"""Membership token issue and verification, with an injected clock."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.errors import AuthenticationError
from connector.identity.tokens import issue_membership_token, verify_membership_token

KEY = ed25519.Ed25519PrivateKey.generate()
ISSUER = "urn:tds:city:participant:operator"
NOW = 1_800_000_000.0


def issue(**kw: object) -> str:
    args: dict[str, object] = dict(
        issuer=ISSUER,
        space="city",
        participant="a",
        role="enterprise",
        certificate_thumbprint="thumb",
        attrs={"org": "91310000X"},
        now=NOW,
        ttl_seconds=300,
    )
    args.update(kw)
    token, _ = issue_membership_token(KEY, **args)  # type: ignore[arg-type]
    return token


def verify(token: str, now: float = NOW) -> object:
    return verify_membership_token(
        token, KEY.public_key(), issuer=ISSUER, space="city", now=now, leeway_seconds=30
    )


def test_round_trip_carries_identity_and_binding() -> None:
    m = verify(issue())
    assert m.participant == "a" and m.role == "enterprise"  # type: ignore[attr-defined]
    assert m.certificate_thumbprint == "thumb"  # type: ignore[attr-defined]
    assert m.attrs == {"org": "91310000X"}  # type: ignore[attr-defined]
    assert m.expires_at == int(NOW) + 300  # type: ignore[attr-defined]


def test_expiry_uses_the_injected_clock_with_leeway() -> None:
    token = issue()
    verify(token, NOW + 300 + 30)
    with pytest.raises(AuthenticationError, match="expired"):
        verify(token, NOW + 300 + 31)


def test_token_from_the_future_is_refused() -> None:
    with pytest.raises(AuthenticationError, match="future"):
        verify(issue(now=NOW + 120))


def test_unbound_token_is_refused() -> None:
    with pytest.raises(AuthenticationError, match="not bound"):
        verify(issue(certificate_thumbprint=""))
