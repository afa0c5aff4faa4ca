"""``tds consent list`` says what a consent is now: in force, expired or withdrawn."""

from __future__ import annotations

from connector._proto.tds.v1 import admin_pb2
from connector.cli.consent import consent_json, describe

EXPIRES_NS = 1_798_761_600_000_000_000  # 2027-01-01 00:00 UTC


def _consent(**kw: object) -> admin_pb2.ConsentInfo:
    return admin_pb2.ConsentInfo(
        id="cs-1",
        recipient="hospital",
        purposes=["treatment"],
        method="analysis",
        categories=["health"],
        expires_ns=EXPIRES_NS,
        **kw,  # type: ignore[arg-type]
    )


def test_an_expired_consent_is_not_shown_in_force() -> None:
    """Issue 18 finding 11: an expired consent was listed as "in force until …"."""
    later = EXPIRES_NS + 1
    line = describe(_consent(), later)
    assert "EXPIRED on 2027-01-01 00:00 UTC" in line and "in force" not in line
    assert consent_json(_consent(), later)["state"] == "expired"
    assert "in force until 2027-01-01 00:00 UTC" in describe(_consent(), EXPIRES_NS - 1)
    assert consent_json(_consent(), EXPIRES_NS - 1)["state"] == "in force"
    assert "WITHDRAWN" in describe(_consent(withdrawn=True), later)
