"""The operator's signed revocation list.

A compact JWS (EdDSA, ``typ: tds-revocation+jwt``) signed with the operator's key, whose
claims list revoked participant ids and revoked certificate serial numbers (lower-case
hex). Its distinct ``typ`` keeps it from ever being accepted as a membership token,
though both are signed by the same key.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.errors import AuthenticationError, VerificationError
from connector.identity.tokens import ALGORITHM, verify_operator_jws

__all__ = ["REVOCATION_TYPE", "RevocationList", "sign_revocation_list", "verify_revocation_list"]

REVOCATION_TYPE = "tds-revocation+jwt"


@dataclass(frozen=True)
class RevocationList:
    """Who and which certificates the operator has revoked, as of ``issued_at``."""

    serial: int
    issued_at: int
    participants: frozenset[str]
    certificate_serials: frozenset[str]

    def check(self, participant: str, certificate_serial: int) -> None:
        """Raise ``AuthenticationError`` if the participant or its certificate is revoked."""
        if participant in self.participants:
            raise AuthenticationError(
                f"participant {participant!r} has been revoked by the operator"
            )
        if format(certificate_serial, "x") in self.certificate_serials:
            raise AuthenticationError("the client certificate has been revoked by the operator")


def sign_revocation_list(
    key: ed25519.Ed25519PrivateKey, *, issuer: str, space: str, revocations: RevocationList
) -> str:
    """Sign ``revocations`` as the operator."""
    claims = {
        "iss": issuer,
        "aud": space,
        "iat": revocations.issued_at,
        "serial": revocations.serial,
        "participants": sorted(revocations.participants),
        "certificate_serials": sorted(revocations.certificate_serials),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"typ": REVOCATION_TYPE})


def verify_revocation_list(
    token: str, key: ed25519.Ed25519PublicKey, *, issuer: str, space: str
) -> RevocationList:
    """Verify a revocation list from the registry or raise ``VerificationError``."""
    try:
        claims = verify_operator_jws(
            token,
            key,
            typ=REVOCATION_TYPE,
            issuer=issuer,
            audience=space,
            required=["iss", "aud", "iat", "serial", "participants", "certificate_serials"],
            what="revocation list",
        )
    except AuthenticationError as exc:
        raise VerificationError(str(exc)) from None
    serial, iat = claims["serial"], claims["iat"]
    parts, certs = claims["participants"], claims["certificate_serials"]
    if not isinstance(serial, int) or not isinstance(iat, int):
        raise VerificationError("revocation list serial and iat must be integers")
    if not (isinstance(parts, list) and all(isinstance(p, str) for p in parts)):
        raise VerificationError("revocation list participants must be a list of ids")
    if not (isinstance(certs, list) and all(isinstance(c, str) for c in certs)):
        raise VerificationError("revocation list certificate_serials must be a list of hex")
    return RevocationList(
        serial=serial,
        issued_at=iat,
        participants=frozenset(parts),
        certificate_serials=frozenset(certs),
    )
