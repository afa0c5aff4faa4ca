"""Certificate expiry on the operator's participants page and in ``tds registry list``.

A space of its own: ``soon`` is enrolled with a certificate that expires in ten days (the
registry refuses to enrol an expired one, so "expired" is checked on the helpers with a
given time), ``later`` with the PKI's usual year. The registry reads the expiry from the
certificate it stored at enrolment; the page and the CLI flag the one inside 30 days.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connector.cli.registry import run_list
from connector.console.app import expires_in
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.identity.pki import issue_participant_certificate, load_ca
from connector.node.clients import registry_client
from connector.registry.directory import EXPIRY_WARNING_MS, CertificateExpiry, PeerInfo
from tests.console.conftest import open_console
from tests.console.test_access import login, request

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def expiring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalSpace, int]]:
    """The space, and the notAfter (Unix ms) of ``soon``'s certificate."""
    root = tmp_path_factory.mktemp("expiry")
    with LocalSpace.create(root, [("soon", Role.ENTERPRISE), ("later", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        # Re-issue soon's certificate for its own key, ending in 10 days and an hour (the
        # hour keeps "10 d" the whole number of days left while the test runs).
        me = sp.manifest.participant("soon")
        key = serialization.load_pem_private_key((sp.pki_dir / me.tls_key).read_bytes(), None)
        not_after = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=10, hours=1)
        cert = issue_participant_certificate(
            load_ca(sp.pki_dir, sp.manifest),
            sp.space,
            "soon",
            key.public_key(),  # type: ignore[arg-type]
            not_after=not_after,
        )
        (sp.pki_dir / me.tls_cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        sp.enrol("soon", "127.0.0.1:1")
        sp.enrol("later", "127.0.0.1:2")
        yield sp, int(not_after.timestamp() * 1000)


def _stored_not_after_ms(sp: LocalSpace, pid: str) -> int:
    pem = (sp.pki_dir / sp.manifest.participant(pid).tls_cert).read_bytes()
    return int(x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp() * 1000)


def test_the_registry_answers_each_certificates_not_after(expiring: tuple[LocalSpace, int]) -> None:
    sp, soon_ms = expiring
    client = registry_client(sp.configs[sp.manifest.operator_id])
    try:
        peers = {p.id: p for p in client.list_participants()}
    finally:
        client.close()
    assert peers["soon"].certificate_not_after_ms == soon_ms
    assert peers["later"].certificate_not_after_ms == _stored_not_after_ms(sp, "later")
    assert peers["later"].certificate_not_after_ms - soon_ms > 300 * DAY_MS
    op = sp.manifest.operator_id
    assert peers[op].certificate_not_after_ms == _stored_not_after_ms(sp, op)


def test_the_page_shows_the_expiry_and_warns_of_the_one_inside_30_days(
    expiring: tuple[LocalSpace, int],
) -> None:
    sp, soon_ms = expiring
    console = open_console(sp, sp.manifest.operator_id)
    try:
        session, _ = login(console)
        status, _, page = request(console, "GET", "/participants", cookie=session)
    finally:
        console.stop()
    assert status == 200
    rows = {
        pid: page.split(f'data-participant="{pid}"', 1)[1].split("</tr>", 1)[0]
        for pid in ("soon", "later")
    }
    soon_date = dt.datetime.fromtimestamp(soon_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert f'data-ms="{soon_ms}">{soon_date}</span>' in rows["soon"]
    assert 'data-expiry="expiring"' in rows["soon"]
    assert '<b class="warn">10 天后到期 / expires in 10 d</b>' in rows["soon"]
    later_ms = _stored_not_after_ms(sp, "later")
    later_date = dt.datetime.fromtimestamp(later_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert f'data-ms="{later_ms}">{later_date}</span>' in rows["later"]
    assert 'data-expiry="valid"' in rows["later"]
    assert "expires in" not in rows["later"] and "EXPIRED" not in rows["later"]


def test_tds_registry_list_shows_the_expiry(
    expiring: tuple[LocalSpace, int], capsys: pytest.CaptureFixture[str]
) -> None:
    sp, soon_ms = expiring
    config = sp.root / "soon.toml"
    sp.write_config("soon", "127.0.0.1:1", sp.registry_address)
    assert run_list(argparse.Namespace(config=config, role="", json=True)) == 0
    listed = {p["id"]: p for p in json.loads(capsys.readouterr().out)}
    soon_text = dt.datetime.fromtimestamp(soon_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (
        listed["soon"]["certificate_not_after_ms"],
        listed["soon"]["certificate_not_after"],
        listed["soon"]["certificate_expiry"],
    ) == (soon_ms, soon_text, "expiring")
    assert listed["later"]["certificate_expiry"] == "valid"

    assert run_list(argparse.Namespace(config=config, role="", json=False)) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["soon"].endswith(f"cert until {soon_text[:10]} EXPIRES IN 10 d")
    later = dt.datetime.fromtimestamp(_stored_not_after_ms(sp, "later") / 1000, dt.UTC)
    assert lines["later"].endswith(f"cert until {later:%Y-%m-%d}")


def _peer(not_after_ms: int) -> PeerInfo:
    return PeerInfo("p", "enterprise", "", b"", "", False, 0, {}, not_after_ms)


def test_expiry_standing_at_its_boundaries() -> None:
    now = 1_800_000_000_000
    assert _peer(0).certificate_expiry(now) is CertificateExpiry.UNKNOWN
    assert _peer(now).certificate_expiry(now) is CertificateExpiry.EXPIRED
    assert _peer(now - 1).certificate_expiry(now) is CertificateExpiry.EXPIRED
    assert _peer(now + 1).certificate_expiry(now) is CertificateExpiry.EXPIRING
    assert _peer(now + EXPIRY_WARNING_MS).certificate_expiry(now) is CertificateExpiry.EXPIRING
    assert _peer(now + EXPIRY_WARNING_MS + 1).certificate_expiry(now) is CertificateExpiry.VALID


def test_the_warning_words() -> None:
    assert expires_in(0) == "已过期 / EXPIRED"
    assert expires_in(-5 * DAY_MS) == "已过期 / EXPIRED"
    assert expires_in(DAY_MS - 1) == "今天到期 / expires today"
    assert expires_in(29 * DAY_MS + 5) == "29 天后到期 / expires in 29 d"
