"""The operator-signed directory, and the copy a member caches to outlast a registry outage.

The registry serves its directory in two parts. The **entries** are every participant as
canonical JSON (RFC 8785). The **head** is a compact JWS (EdDSA, ``typ:
tds-directory+jwt``) signed with the operator's key over ``iss``, ``aud``, ``iat``, the
hex SHA-256 of the entries (``digest``) and their number (``count``). A member that
already holds the current entries asks with their digest and gets a freshly signed head
alone, so keeping the copy fresh costs one small message per refresh however large the
space grows.

A member keeps the newest pair it verified in its database (``directory_cache``, shared
by its replicas) and looks peers up there. The pair is verified with the operator's
public key when it is fetched and again when it is read back, so whoever can write the
database can only put there a pair the operator signed: an edited entry no longer
matches the signed digest, a head signed by anyone else does not verify, and an older
authentic pair is judged by its signed ``iat`` (the newest held wins, and every pair is
refused once older than the configured maximum).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import common_pb2
from connector.audit.canonical import canonical_json, parse_canonical
from connector.errors import AuthenticationError, VerificationError
from connector.identity.tokens import ALGORITHM, verify_operator_jws

__all__ = [
    "DIRECTORY_TYPE",
    "EXPIRY_WARNING_MS",
    "CertificateExpiry",
    "Directory",
    "DirectoryHead",
    "PeerInfo",
    "SignedDirectory",
    "directory_entries",
    "entries_digest",
    "sign_directory_head",
    "verify_directory",
    "verify_directory_head",
]

log = logging.getLogger(__name__)

DIRECTORY_TYPE = "tds-directory+jwt"
_WHAT = "directory"


EXPIRY_WARNING_MS = 30 * 86_400_000
"""A certificate this close to its notAfter is flagged: 30 days leaves the operator time to
issue and enrol a new one before the participant's connections start failing."""


class CertificateExpiry(StrEnum):
    """Where a participant's enrolled certificate stands against its notAfter."""

    VALID = "valid"
    EXPIRING = "expiring"
    """Within ``EXPIRY_WARNING_MS`` of its notAfter."""
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    """No notAfter known (an entry read from the signed directory)."""


@dataclass(frozen=True)
class PeerInfo:
    """A participant as the registry's directory describes it."""

    id: str
    role: str
    address: str
    signing_public_key: bytes
    certificate_thumbprint: str
    revoked: bool
    enrolled_at: int
    attributes: dict[str, str] = field(default_factory=dict)
    certificate_not_after_ms: int = 0
    """When the enrolled certificate expires, as ``ListParticipants`` answers it; not signed
    (left out of ``claims``), so 0 for an entry read from the signed directory."""

    def certificate_expiry(self, now_ms: int) -> CertificateExpiry:
        """The enrolled certificate's standing at ``now_ms`` (Unix milliseconds)."""
        if not self.certificate_not_after_ms:
            return CertificateExpiry.UNKNOWN
        if self.certificate_not_after_ms <= now_ms:
            return CertificateExpiry.EXPIRED
        if self.certificate_not_after_ms - now_ms <= EXPIRY_WARNING_MS:
            return CertificateExpiry.EXPIRING
        return CertificateExpiry.VALID

    @classmethod
    def from_message(cls, msg: common_pb2.Participant) -> PeerInfo:
        """From the wire form."""
        return cls(
            id=msg.id,
            role=msg.role,
            address=msg.address,
            signing_public_key=bytes(msg.signing_public_key),
            certificate_thumbprint=msg.certificate_thumbprint,
            revoked=msg.revoked,
            enrolled_at=msg.enrolled_at,
            attributes=dict(msg.attributes),
            certificate_not_after_ms=msg.certificate_not_after_ms,
        )

    def claims(self) -> dict[str, Any]:
        """The entry as it is signed (the key as hex)."""
        return {
            "id": self.id,
            "role": self.role,
            "address": self.address,
            "signing_public_key": self.signing_public_key.hex(),
            "certificate_thumbprint": self.certificate_thumbprint,
            "revoked": self.revoked,
            "enrolled_at": self.enrolled_at,
            "attributes": dict(self.attributes),
        }


@dataclass(frozen=True)
class SignedDirectory:
    """The head (operator JWS) and the entries (canonical JSON) it names by digest."""

    head: str
    entries: str


@dataclass(frozen=True)
class Directory:
    """A verified directory: who is listed, as of ``issued_at`` (unix seconds)."""

    signed: SignedDirectory
    issued_at: int
    digest: str
    participants: dict[str, PeerInfo]


@dataclass(frozen=True)
class DirectoryHead:
    """What a verified head says: when, and which entries by digest and count."""

    issued_at: int
    digest: str
    count: int


def entries_digest(entries: str) -> str:
    """The hex SHA-256 a head names its entries by."""
    return hashlib.sha256(entries.encode()).hexdigest()


def directory_entries(peers: list[PeerInfo]) -> str:
    """The canonical JSON of ``peers`` (sorted by id), as the head's digest covers it."""
    ordered = sorted(peers, key=lambda p: p.id)
    return canonical_json([p.claims() for p in ordered]).decode()


def sign_directory_head(
    key: ed25519.Ed25519PrivateKey, *, issuer: str, space: str, entries: str, issued_at: int
) -> str:
    """Sign, as the operator, a head naming ``entries`` as the directory at ``issued_at``."""
    claims = {
        "iss": issuer,
        "aud": space,
        "iat": issued_at,
        "digest": entries_digest(entries),
        "count": len(parse_canonical(entries.encode(), _WHAT)),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"typ": DIRECTORY_TYPE})


def verify_directory_head(
    head: str, key: ed25519.Ed25519PublicKey, *, issuer: str, space: str
) -> DirectoryHead:
    """Verify a directory head's signature and claims; ``VerificationError`` if not."""
    try:
        claims = verify_operator_jws(
            head,
            key,
            typ=DIRECTORY_TYPE,
            issuer=issuer,
            audience=space,
            required=["iss", "aud", "iat", "digest", "count"],
            what="directory head",
        )
    except AuthenticationError as exc:
        raise VerificationError(str(exc)) from None
    iat, digest, count = claims["iat"], claims["digest"], claims["count"]
    if not isinstance(iat, int) or not isinstance(count, int) or not isinstance(digest, str):
        raise VerificationError("directory head iat and count must be integers, digest a string")
    return DirectoryHead(issued_at=iat, digest=digest, count=count)


def _peer(claims: Any) -> PeerInfo:
    if not isinstance(claims, dict):
        raise VerificationError("directory entries must be objects")
    try:
        attributes = claims["attributes"]
        peer = PeerInfo(
            id=claims["id"],
            role=claims["role"],
            address=claims["address"],
            signing_public_key=bytes.fromhex(claims["signing_public_key"]),
            certificate_thumbprint=claims["certificate_thumbprint"],
            revoked=claims["revoked"],
            enrolled_at=claims["enrolled_at"],
            attributes=dict(attributes),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"a directory entry is malformed: {exc}") from None
    typed = (
        all(isinstance(v, str) for v in (peer.id, peer.role, peer.address))
        and isinstance(peer.revoked, bool)
        and isinstance(peer.enrolled_at, int)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items())
    )
    if not typed:
        raise VerificationError(f"the directory entry of {peer.id!r} has fields of wrong types")
    return peer


def verify_directory(
    signed: SignedDirectory, key: ed25519.Ed25519PublicKey, *, issuer: str, space: str
) -> Directory:
    """Verify a head and the entries it names; ``VerificationError`` if either fails."""
    head = verify_directory_head(signed.head, key, issuer=issuer, space=space)
    if entries_digest(signed.entries) != head.digest:
        raise VerificationError("the directory entries do not match the digest the operator signed")
    listed = parse_canonical(signed.entries.encode(), _WHAT)
    if not isinstance(listed, list) or len(listed) != head.count:
        raise VerificationError("the directory entries are not the list the operator signed")
    peers = [_peer(c) for c in listed]
    return Directory(
        signed=signed,
        issued_at=head.issued_at,
        digest=head.digest,
        participants={p.id: p for p in peers},
    )
