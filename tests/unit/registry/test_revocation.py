"""Signed revocation lists and how a connector holds them."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.clock import FixedClock
from connector.errors import AuthenticationError, Unavailable, VerificationError
from connector.identity.pki import init_space
from connector.identity.tokens import issue_membership_token
from connector.registry.client import RegistryClient
from connector.registry.revocation import (
    REVOCATION_TYPE,
    RevocationList,
    RevokedGrant,
    sign_revocation_list,
    verify_revocation_list,
)
from connector.rpc.channel import TlsIdentity

KEY = ed25519.Ed25519PrivateKey.generate()
ISSUER = "urn:tds:city:participant:operator"


def signed(serial: int, issued_at: int, parts: set[str] | None = None) -> str:
    rl = RevocationList(serial, issued_at, frozenset(parts or set()), frozenset({"ab12"}))
    return sign_revocation_list(KEY, issuer=ISSUER, space="city", revocations=rl)


def test_round_trip_and_checks() -> None:
    rl = verify_revocation_list(
        signed(3, 100, {"x"}), KEY.public_key(), issuer=ISSUER, space="city"
    )
    assert rl.serial == 3 and rl.participants == {"x"}
    rl.check("y", 0x1234)
    with pytest.raises(AuthenticationError, match="'x' has been revoked"):
        rl.check("x", 0x1234)
    with pytest.raises(AuthenticationError, match="certificate has been revoked"):
        rl.check("y", 0xAB12)


def test_revoked_grants_round_trip() -> None:
    rl = RevocationList(
        7, 100, frozenset(), frozenset(), frozenset({RevokedGrant("gr-1", "opa", 5_000)})
    )
    token = sign_revocation_list(KEY, issuer=ISSUER, space="city", revocations=rl)
    back = verify_revocation_list(token, KEY.public_key(), issuer=ISSUER, space="city")
    assert back == rl
    assert back.revoked_grants("opa") == {"gr-1"} and back.revoked_grants("x") == frozenset()
    assert back.grant_revoked_since("opa", 5_000) and not back.grant_revoked_since("opa", 5_001)


@pytest.mark.parametrize(
    "grants",
    [
        None,  # a list that says nothing of grants is not taken to mean "none revoked"
        "gr-1",
        [{"id": "gr-1", "participant": "opa"}],
        [{"id": "gr-1", "participant": "opa", "revoked_ms": "5"}],
        [{"id": "gr-1", "participant": "opa", "revoked_ms": True}],
        [{"id": "gr-1", "participant": "opa", "revoked_ms": 5, "extra": 1}],
    ],
)
def test_list_with_malformed_grants_is_refused(grants: object) -> None:
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": "city",
        "iat": 1,
        "serial": 1,
        "participants": [],
        "certificate_serials": [],
    }
    if grants is not None:
        claims["grants"] = grants
    token = jwt.encode(claims, KEY, algorithm="EdDSA", headers={"typ": REVOCATION_TYPE})
    with pytest.raises(VerificationError):
        verify_revocation_list(token, KEY.public_key(), issuer=ISSUER, space="city")


def test_list_signed_by_another_key_is_refused() -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    token = sign_revocation_list(
        other,
        issuer=ISSUER,
        space="city",
        revocations=RevocationList(1, 1, frozenset(), frozenset()),
    )
    with pytest.raises(VerificationError, match="signature"):
        verify_revocation_list(token, KEY.public_key(), issuer=ISSUER, space="city")


def test_membership_token_is_not_a_revocation_list() -> None:
    token, _ = issue_membership_token(
        KEY,
        issuer=ISSUER,
        space="city",
        participant="a",
        role="enterprise",
        certificate_thumbprint="t",
        attrs={},
        now=100,
        ttl_seconds=300,
    )
    with pytest.raises(VerificationError, match="type"):
        verify_revocation_list(token, KEY.public_key(), issuer=ISSUER, space="city")


class _Refused(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAUTHENTICATED

    def details(self) -> str:
        return self._details


class _Served:
    """A registry stub answering GetRevocationList with a fixed signed list."""

    def __init__(self) -> None:
        self.token = ""
        self.refused = ""
        """When set: the registry refuses this connector with UNAUTHENTICATED and this."""

    def GetRevocationList(self, request: object, timeout: float) -> object:
        if self.refused:
            raise _Refused(self.refused)
        return type("R", (), {"revocation_list": self.token})()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsIdentity:
    out = tmp_path_factory.mktemp("pki")
    me = init_space(out, "city", []).participant("operator")
    return TlsIdentity.load(out / "ca.pem", out / me.tls_cert, out / me.tls_key)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1000)


@pytest.fixture
def served(tls: TlsIdentity, clock: FixedClock) -> Iterator[tuple[RegistryClient, _Served]]:
    # Channels are lazy and never dialled: the registry's answers come from the stub.
    c = RegistryClient(
        address="127.0.0.1:1",
        space="city",
        operator_id="operator",
        issuer=ISSUER,
        tls=tls,
        operator_key=KEY.public_key(),
        clock=clock,
        revocation_max_age_seconds=300,
    )
    stub = _Served()
    c._stub = stub  # type: ignore[assignment]
    yield c, stub
    c.close()


def test_no_list_means_refuse(served: tuple[RegistryClient, _Served]) -> None:
    c, _ = served
    with pytest.raises(Unavailable, match="no revocation list"):
        c.current()


def test_stale_list_means_refuse(served: tuple[RegistryClient, _Served], clock: FixedClock) -> None:
    c, stub = served
    stub.token = signed(1, 1000)
    c.refresh_revocations()
    assert c.current().serial == 1
    clock.advance(301)
    with pytest.raises(Unavailable, match="unreachable"):
        c.current()


def test_rollback_to_an_older_list_is_refused(served: tuple[RegistryClient, _Served]) -> None:
    c, stub = served
    stub.token = signed(5, 1000, {"x"})
    c.refresh_revocations()
    stub.token = signed(4, 1001)
    with pytest.raises(VerificationError, match="older"):
        c.refresh_revocations()
    assert c.current().participants == {"x"}


def test_a_revoked_connector_is_told_it_was_revoked_not_that_the_registry_is_away(
    served: tuple[RegistryClient, _Served], clock: FixedClock
) -> None:
    """Issue 18 finding 11: a revoked member's own admin read "the registry is
    unreachable" once its list went stale, though the registry had answered: revoked."""
    c, stub = served
    stub.token = signed(1, 1000)
    c.refresh_revocations()
    stub.refused = "participant 'a' has been revoked by the operator"
    with pytest.raises(AuthenticationError, match="revoked by the operator"):
        c.refresh_revocations()
    clock.advance(301)
    with pytest.raises(Unavailable) as err:
        c.current()
    assert "revoked by the operator" in str(err.value)
    assert "unreachable" not in str(err.value)
    # Enrolled again: the registry serves it, and a stale list is stale, no more.
    stub.refused = ""
    stub.token = signed(2, 1301)
    c.refresh_revocations()
    assert c.current().serial == 2
