"""Reading certificates and keys, and what tds needs from them.

Every loader names the file it could not use and what is wrong with it.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from connector.errors import AuthenticationError, ConfigError, InvalidRequest
from connector.identity.names import CertificateName, parse_uri

__all__ = [
    "certificate_name",
    "certificate_thumbprint",
    "load_certificate",
    "load_ed25519_private_key",
    "load_ed25519_public_key",
    "load_tls_private_key",
    "parse_certificate_pem",
    "raw_public_key",
    "read_file_bytes",
]


def read_file_bytes(path: Path, what: str) -> bytes:
    """Read ``path`` or raise ``ConfigError`` naming ``what`` and the path."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a directory, expected a file: {path}") from None
    except PermissionError:
        raise ConfigError(f"{what} is not readable (permission denied): {path}") from None


def parse_certificate_pem(data: bytes, what: str = "certificate") -> x509.Certificate:
    """Parse one PEM certificate or raise ``InvalidRequest``."""
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise InvalidRequest(f"{what} is not a PEM X.509 certificate") from None


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    """Load a PEM certificate file or raise ``ConfigError`` naming it."""
    data = read_file_bytes(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{what} {path} is not a PEM X.509 certificate") from None


def _load_private_key(path: Path, what: str) -> object:
    data = read_file_bytes(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what} {path} is not an unencrypted PEM private key ({exc})") from None


def load_tls_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the ECDSA P-256 TLS key of a connector."""
    key = _load_private_key(path, "TLS private key")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"TLS private key {path} is not an ECDSA key")
    return key


def load_ed25519_private_key(path: Path, what: str = "signing key") -> ed25519.Ed25519PrivateKey:
    """Load an Ed25519 private key (signing key of a participant or the operator)."""
    key = _load_private_key(path, what)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{what} {path} is not an Ed25519 private key")
    return key


def load_ed25519_public_key(path: Path, what: str = "public key") -> ed25519.Ed25519PublicKey:
    """Load an Ed25519 public key in PEM (SubjectPublicKeyInfo)."""
    data = read_file_bytes(path, what)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"{what} {path} is not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"{what} {path} is not an Ed25519 public key")
    return key


def raw_public_key(key: ed25519.Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def certificate_thumbprint(cert: x509.Certificate) -> str:
    """RFC 8705 ``x5t#S256``: base64url (unpadded) SHA-256 of the DER certificate."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def certificate_name(cert: x509.Certificate) -> CertificateName:
    """The single tds SAN URI of a certificate, or ``AuthenticationError``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise AuthenticationError("certificate has no subject alternative name") from None
    uris: list[str] = [
        u
        for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith("urn:tds:")
    ]
    if len(uris) != 1:
        raise AuthenticationError(
            f"certificate must carry exactly one urn:tds: SAN URI, found {len(uris)}"
        )
    try:
        return parse_uri(uris[0])
    except InvalidRequest as exc:
        raise AuthenticationError(str(exc)) from None
