"""A development public-key infrastructure for one data space.

``init_space`` makes what a space needs to run on one machine: the data-space CA, the
operator, and per participant a TLS key and certificate (ECDSA P-256, SAN URI
``urn:tds:SPACE:participant:ID``, client and server auth), an Ed25519 signing key, and an
administrator client certificate. Production spaces use a real CA; the connector only
needs the files this module writes, wherever they come from.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connector.errors import ConfigError, InvalidRequest
from connector.identity.names import (
    Role,
    admin_uri,
    check_id,
    participant_dns_name,
    participant_uri,
)

__all__ = [
    "CertificateAuthority",
    "ParticipantMaterial",
    "SpaceManifest",
    "create_ca",
    "init_space",
    "issue_admin_certificate",
    "issue_participant_certificate",
    "load_manifest",
    "parse_participant_spec",
]

MANIFEST_NAME = "manifest.json"
_DAY = dt.timedelta(days=1)


@dataclass
class CertificateAuthority:
    """The CA certificate and key that issue every certificate of a space."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ParticipantMaterial:
    """Where one participant's key material was written (paths relative to the manifest)."""

    id: str
    role: str
    uri: str
    dns_name: str
    tls_cert: str
    tls_key: str
    signing_key: str
    signing_public_key: str
    admin_cert: str
    admin_key: str


@dataclass(frozen=True)
class SpaceManifest:
    """Everything ``init_space`` wrote, as listed in ``manifest.json``."""

    space: str
    operator_id: str
    ca_cert: str
    ca_key: str
    participants: list[ParticipantMaterial]

    def participant(self, participant_id: str) -> ParticipantMaterial:
        """The material of one participant, or ``ConfigError``."""
        for p in self.participants:
            if p.id == participant_id:
                return p
        known = ", ".join(p.id for p in self.participants)
        raise ConfigError(f"participant {participant_id!r} is not in the PKI manifest ({known})")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(
    space: str, *, now: dt.datetime | None = None, days: int = 3650
) -> CertificateAuthority:
    """A self-signed ECDSA P-256 CA for ``space``."""
    check_id(space, "space id")
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"tds space {space}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"tds {space} data-space CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + days * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=cert, key=key)


def _leaf(
    ca: CertificateAuthority,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    sans: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def _validity(
    now: dt.datetime | None,
    days: int,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
) -> tuple[dt.datetime, dt.datetime]:
    now = now or _now()
    return (not_before or now - dt.timedelta(minutes=5), not_after or now + days * _DAY)


def issue_participant_certificate(
    ca: CertificateAuthority,
    space: str,
    participant: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: dt.datetime | None = None,
    days: int = 365,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """A TLS certificate for a participant's connector (client and server auth)."""
    start, end = _validity(now, days, not_before, not_after)
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(participant_uri(space, participant)),
        x509.DNSName(participant_dns_name(space, participant)),
    ]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _leaf(ca, public_key, participant, sans, usages, start, end)


def issue_admin_certificate(
    ca: CertificateAuthority,
    space: str,
    participant: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: dt.datetime | None = None,
    days: int = 365,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """A client certificate for the administrator of ``participant``'s connector."""
    start, end = _validity(now, days, not_before, not_after)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(admin_uri(space, participant))]
    return _leaf(
        ca, public_key, f"{participant} admin", sans, [ExtendedKeyUsageOID.CLIENT_AUTH], start, end
    )


def parse_participant_spec(spec: str) -> tuple[str, Role]:
    """Parse ``ID:ROLE`` as given to ``tds pki init --participant``."""
    pid, sep, role = spec.partition(":")
    if not sep:
        raise InvalidRequest(f"--participant {spec!r}: expected ID:ROLE, e.g. gov:government")
    return check_id(pid), Role.parse(role)


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if secret:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_participant(
    out: Path,
    ca: CertificateAuthority,
    space: str,
    pid: str,
    role: Role,
    now: dt.datetime,
    days: int,
) -> ParticipantMaterial:
    rel = Path(pid)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    admin_key = ec.generate_private_key(ec.SECP256R1())
    signing = ed25519.Ed25519PrivateKey.generate()
    tls_cert = issue_participant_certificate(
        ca, space, pid, tls_key.public_key(), now=now, days=days
    )
    admin_cert = issue_admin_certificate(ca, space, pid, admin_key.public_key(), now=now, days=days)
    files = {
        "tls_cert": (rel / "tls.pem", _cert_pem(tls_cert), False),
        "tls_key": (rel / "tls.key", _pem_key(tls_key), True),
        "signing_key": (rel / "signing.key", _pem_key(signing), True),
        "signing_public_key": (
            rel / "signing.pub.pem",
            signing.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            False,
        ),
        "admin_cert": (rel / "admin.pem", _cert_pem(admin_cert), False),
        "admin_key": (rel / "admin.key", _pem_key(admin_key), True),
    }
    for path, data, secret in files.values():
        _write(out / path, data, secret=secret)
    return ParticipantMaterial(
        id=pid,
        role=role.value,
        uri=participant_uri(space, pid),
        dns_name=participant_dns_name(space, pid),
        **{name: str(path) for name, (path, _, _) in files.items()},
    )


def init_space(
    out: Path,
    space: str,
    participants: Sequence[tuple[str, Role]],
    *,
    operator_id: str = "operator",
    now: dt.datetime | None = None,
    days: int = 365,
    force: bool = False,
) -> SpaceManifest:
    """Create a space's CA, operator and participants under ``out``; return the manifest.

    Refuses to write into a directory that already holds a manifest unless ``force``.
    """
    check_id(space, "space id")
    check_id(operator_id, "operator id")
    ids = [operator_id, *(pid for pid, _ in participants)]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InvalidRequest(f"participant ids must be unique; repeated: {', '.join(dupes)}")
    if any(role is Role.OPERATOR for _, role in participants):
        raise InvalidRequest("the operator is created by --operator-id; give other roles only")
    if (out / MANIFEST_NAME).exists() and not force:
        raise ConfigError(f"{out} already holds a PKI ({MANIFEST_NAME}); use --force to replace it")
    now = now or _now()
    ca = create_ca(space, now=now)
    _write(out / "ca.pem", _cert_pem(ca.certificate))
    _write(out / "ca.key", _pem_key(ca.key), secret=True)
    written = [_write_participant(out, ca, space, operator_id, Role.OPERATOR, now, days)]
    written += [
        _write_participant(out, ca, space, pid, role, now, days) for pid, role in participants
    ]
    manifest = SpaceManifest(
        space=space,
        operator_id=operator_id,
        ca_cert="ca.pem",
        ca_key="ca.key",
        participants=written,
    )
    _write(out / MANIFEST_NAME, (json.dumps(asdict(manifest), indent=2) + "\n").encode())
    return manifest


def load_manifest(directory: Path) -> SpaceManifest:
    """Read ``manifest.json`` from a directory made by ``init_space``."""
    path = directory / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
        return SpaceManifest(
            space=raw["space"],
            operator_id=raw["operator_id"],
            ca_cert=raw["ca_cert"],
            ca_key=raw["ca_key"],
            participants=[ParticipantMaterial(**p) for p in raw["participants"]],
        )
    except FileNotFoundError:
        raise ConfigError(f"no PKI manifest at {path}: run 'tds pki init' first") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"PKI manifest {path} is malformed: {exc}") from None


def load_ca(directory: Path, manifest: SpaceManifest) -> CertificateAuthority:
    """Load the CA certificate and key named by a manifest (development only)."""
    from connector.identity.certs import load_certificate, read_file_bytes

    cert = load_certificate(directory / manifest.ca_cert, "CA certificate")
    key = serialization.load_pem_private_key(
        read_file_bytes(directory / manifest.ca_key, "CA key"), password=None
    )
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"CA key {directory / manifest.ca_key} is not an ECDSA key")
    return CertificateAuthority(certificate=cert, key=key)
