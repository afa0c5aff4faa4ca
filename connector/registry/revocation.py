"""The operator's signed revocation list.

A compact JWS (EdDSA, ``typ: tds-revocation+jwt``) signed with the operator's key, whose
claims list revoked participant ids, revoked certificate serial numbers (lower-case hex)
and revoked authorised-operation grants (id, holder, when). Its distinct ``typ`` keeps it
from ever being accepted as a membership token, though both are signed by the same key.

Grants travel in membership tokens, which their holder refreshes when it likes; the list
is how a provider learns that a grant in a still-valid token was revoked. Revocations are
never undone, so the ``serial`` (a count of them) only grows, and a member refuses a list
whose serial or issue time is below the one it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.errors import AuthenticationError, VerificationError
from connector.identity.tokens import ALGORITHM, verify_operator_jws

__all__ = [
    "REVOCATION_TYPE",
    "RevocationList",
    "RevokedGrant",
    "sign_revocation_list",
    "verify_revocation_list",
]

REVOCATION_TYPE = "tds-revocation+jwt"


@dataclass(frozen=True)
class RevokedGrant:
    """An authorised-operation grant the operator revoked."""

    id: str
    participant: str
    """Who held it."""
    revoked_ms: int
    """When the operator revoked it (its clock, Unix milliseconds)."""

    def claims(self) -> dict[str, Any]:
        """The signed form."""
        return {"id": self.id, "participant": self.participant, "revoked_ms": self.revoked_ms}


@dataclass(frozen=True)
class RevocationList:
    """Who, which certificates and which grants the operator has revoked, as of
    ``issued_at``."""

    serial: int
    issued_at: int
    participants: frozenset[str]
    certificate_serials: frozenset[str]
    grants: frozenset[RevokedGrant] = frozenset()

    def revoked_grants(self, participant: str) -> frozenset[str]:
        """Ids of the grants of ``participant`` that are revoked."""
        return frozenset(g.id for g in self.grants if g.participant == participant)

    def grant_revoked_since(self, participant: str, since_ms: int) -> bool:
        """Whether a grant of ``participant`` was revoked at or after ``since_ms``."""
        return any(g.participant == participant and g.revoked_ms >= since_ms for g in self.grants)

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
        "grants": [g.claims() for g in sorted(revocations.grants, key=lambda g: g.id)],
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
            required=[
                "iss",
                "aud",
                "iat",
                "serial",
                "participants",
                "certificate_serials",
                "grants",
            ],
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
        grants=_revoked_grants(claims["grants"]),
    )


def _revoked_grants(value: Any) -> frozenset[RevokedGrant]:
    """The ``grants`` claim, every entry checked (one bad entry refuses the whole list)."""
    if not isinstance(value, list):
        raise VerificationError("revocation list grants must be a list")
    found = []
    for g in value:
        if not (
            isinstance(g, dict)
            and set(g) == {"id", "participant", "revoked_ms"}
            and isinstance(g["id"], str)
            and isinstance(g["participant"], str)
            and type(g["revoked_ms"]) is int
        ):
            raise VerificationError(
                "revocation list grants must be objects of id, participant and revoked_ms"
            )
        found.append(RevokedGrant(g["id"], g["participant"], g["revoked_ms"]))
    return frozenset(found)
