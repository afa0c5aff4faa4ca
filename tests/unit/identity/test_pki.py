"""The development PKI: openssl accepts every certificate, and each names its holder."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from connector.errors import ConfigError, InvalidRequest
from connector.identity.certs import certificate_name, load_certificate
from connector.identity.names import Role
from connector.identity.pki import init_space, load_manifest, parse_participant_spec

PARTICIPANTS = [("gov", Role.GOVERNMENT), ("ent-a", Role.ENTERPRISE), ("alice", Role.INDIVIDUAL)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    init_space(out, "city", PARTICIPANTS)
    return out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_every_certificate_verifies_with_openssl(pki: Path) -> None:
    manifest = load_manifest(pki)
    for p in manifest.participants:
        for cert in (p.tls_cert, p.admin_cert):
            result = subprocess.run(
                ["openssl", "verify", "-CAfile", str(pki / "ca.pem"), str(pki / cert)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip().endswith(": OK")


def test_certificates_carry_their_san_uri_and_usages(pki: Path) -> None:
    manifest = load_manifest(pki)
    assert [p.id for p in manifest.participants] == ["operator", "gov", "ent-a", "alice"]
    for p in manifest.participants:
        tls = load_certificate(pki / p.tls_cert)
        san = tls.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"urn:tds:city:participant:{p.id}"
        ]
        assert san.get_values_for_type(x509.DNSName) == [f"{p.id}.city.tds"]
        eku = tls.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert tls.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
        admin = certificate_name(load_certificate(pki / p.admin_cert))
        assert (admin.kind, admin.participant) == ("admin", p.id)


def test_private_keys_are_owner_only(pki: Path) -> None:
    for key in pki.rglob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_refuses_to_overwrite_without_force(pki: Path) -> None:
    with pytest.raises(ConfigError, match="--force"):
        init_space(pki, "city", PARTICIPANTS)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gov", "expected ID:ROLE"),
        ("gov:mayor", "unknown role"),
        ("Gov:government", "invalid participant id"),
    ],
)
def test_bad_participant_specs(spec: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_participant_spec(spec)


def test_duplicate_and_operator_roles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="repeated: a"):
        init_space(tmp_path, "city", [("a", Role.ENTERPRISE), ("a", Role.GOVERNMENT)])
    with pytest.raises(InvalidRequest, match="operator"):
        init_space(tmp_path, "city", [("op2", Role.OPERATOR)])
