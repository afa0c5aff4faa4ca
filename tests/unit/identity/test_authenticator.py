"""The authenticator remembers a token's verified signature, never its verdict on time,
certificate binding or revocation: each is checked on every call."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from connector.clock import FixedClock
from connector.errors import AuthenticationError, PermissionDenied
from connector.identity.certs import certificate_thumbprint
from connector.identity.pki import create_ca, issue_participant_certificate
from connector.identity.tokens import issue_membership_token
from connector.registry.revocation import RevocationList
from connector.rpc.auth import Access, Authenticator

OPERATOR = ed25519.Ed25519PrivateKey.generate()
ISSUER = "urn:tds:city:participant:operator"
NOW = 1_800_000_000.0


class Revocations:
    def __init__(self) -> None:
        self.list = RevocationList(1, int(NOW), frozenset(), frozenset())

    def current(self) -> RevocationList:
        return self.list


class Context:
    """What the authenticator reads of a gRPC call."""

    def __init__(self, pem: bytes, token: str) -> None:
        self._pem, self._token = pem, token

    def auth_context(self) -> dict[str, Any]:
        return {"x509_pem_cert": self._pem}

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self._token}")]


def certificate(participant: str) -> tuple[bytes, str, int]:
    issued = dt.datetime.fromtimestamp(NOW, dt.UTC)  # valid by the test's clock, not the wall's
    ca = create_ca("city", now=issued)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_participant_certificate(ca, "city", participant, key.public_key(), now=issued)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return pem, certificate_thumbprint(cert), cert.serial_number


def token(thumbprint: str, ttl: int = 300, participant: str = "a") -> str:
    issued, _ = issue_membership_token(
        OPERATOR,
        issuer=ISSUER,
        space="city",
        participant=participant,
        role="enterprise",
        certificate_thumbprint=thumbprint,
        attrs={},
        now=NOW,
        ttl_seconds=ttl,
    )
    return issued


@pytest.fixture
def setup() -> tuple[Authenticator, FixedClock, Revocations]:
    clock, revocations = FixedClock(NOW), Revocations()
    auth = Authenticator(
        space="city",
        participant="b",
        operator_key=OPERATOR.public_key(),
        issuer=ISSUER,
        revocations=revocations,
        clock=clock,
        leeway_seconds=30,
    )
    return auth, clock, revocations


def test_a_remembered_token_still_expires(setup: Any) -> None:
    auth, clock, _ = setup
    pem, thumb, _ = certificate("a")
    call = Context(pem, token(thumb, ttl=300))
    for _ in range(3):  # the second and third calls find the token remembered
        assert auth.authenticate(Access.MEMBER, call).participant == "a"
    clock.advance(300 + 31)
    with pytest.raises(AuthenticationError, match="expired"):
        auth.authenticate(Access.MEMBER, call)


def test_a_remembered_token_is_refused_with_another_certificate(setup: Any) -> None:
    auth, _, _ = setup
    pem, thumb, _ = certificate("a")
    other_pem, _, _ = certificate("a")  # the same participant's name, another key
    issued = token(thumb)
    assert auth.authenticate(Access.MEMBER, Context(pem, issued)).participant == "a"
    with pytest.raises(AuthenticationError, match="different certificate"):
        auth.authenticate(Access.MEMBER, Context(other_pem, issued))


def test_a_remembered_caller_is_refused_once_revoked(setup: Any) -> None:
    auth, _, revocations = setup
    pem, thumb, serial = certificate("a")
    call = Context(pem, token(thumb))
    assert auth.authenticate(Access.MEMBER, call).participant == "a"
    revocations.list = RevocationList(2, int(NOW), frozenset(), frozenset({format(serial, "x")}))
    with pytest.raises(AuthenticationError, match="revoked"):
        auth.authenticate(Access.MEMBER, call)


def test_a_forged_token_is_refused_every_time(setup: Any) -> None:
    auth, _, _ = setup
    pem, thumb, _ = certificate("a")
    head, body, signature = token(thumb).split(".")
    forged = f"{head}.{body}.{signature[:-4]}AAAA"
    for _ in range(2):  # a refusal is not remembered as anything
        with pytest.raises(AuthenticationError):
            auth.authenticate(Access.MEMBER, Context(pem, forged))


def test_a_revoked_connector_answers_no_certificate_call(setup: Any) -> None:
    """Revocation closes a connector to everything but its audit log (docs/evidence.md):
    the certificate-only calls too (the DSP data endpoint reads data with no token)."""
    auth, _, revocations = setup
    pem, thumb, _ = certificate("a")
    call = Context(pem, token(thumb))
    assert auth.authenticate(Access.CERTIFICATE, call).participant == "a"
    revocations.list = RevocationList(2, int(NOW), frozenset({"b"}), frozenset())
    with pytest.raises(PermissionDenied, match="'b' has been revoked by the operator"):
        auth.authenticate(Access.CERTIFICATE, call)
    with pytest.raises(PermissionDenied, match="'b' has been revoked by the operator"):
        auth.authenticate_presented(Access.CERTIFICATE, [pem], [])
    with pytest.raises(PermissionDenied, match="'b' has been revoked by the operator"):
        auth.authenticate(Access.MEMBER, call)
