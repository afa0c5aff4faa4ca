"""The checked-in development space is complete and its certificates verify."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from connector.identity.certs import certificate_name, load_certificate
from connector.identity.pki import load_manifest

CERTS_DEV = Path(__file__).resolve().parents[3] / "certs-dev"


def test_certs_dev_is_a_complete_valid_space() -> None:
    manifest = load_manifest(CERTS_DEV)
    roles = {p.id: p.role for p in manifest.participants}
    assert roles == {
        "operator": "operator",
        "city-gov": "government",
        "ent-a": "enterprise",
        "ent-b": "enterprise",
        "alice": "individual",
        "auditor": "auditor",
    }
    ca = load_certificate(CERTS_DEV / manifest.ca_cert)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    for p in manifest.participants:
        cert = load_certificate(CERTS_DEV / p.tls_cert)
        cert.verify_directly_issued_by(ca)
        assert cert.not_valid_after_utc > soon, "certs-dev expires soon: regenerate it"
        assert certificate_name(cert).participant == p.id
