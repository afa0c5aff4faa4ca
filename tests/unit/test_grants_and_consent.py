"""Grants and consents are only what their signer signed: forged, altered or misattributed
documents are refused; revoked grants leave tokens; withdrawals win over stale consents."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit import jws
from connector.audit.log import TransparencyLog
from connector.clock import FixedClock
from connector.consent.register import ConsentRegister, verify_consent
from connector.errors import InvalidRequest, NotFound, PreconditionFailed, VerificationError
from connector.registry.grants import (
    FIVE_YEARS_NS,
    GrantStore,
    grants_attribute,
    new_grant,
    sign_grant,
    verify_grant,
)
from connector.store.database import Database, open_database

NOW = 1_800_000_000.0
NOW_NS = int(NOW * 1e9)
YEAR_NS = 365 * 86_400 * 10**9


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'g.db'}")
    yield database
    database.close()


def _grant(**kw: object) -> object:
    terms: dict[str, object] = {
        "participant": "ent-a",
        "scope": ["traffic"],
        "purposes": ["analytics"],
        "start_ns": NOW_NS,
        "end_ns": NOW_NS + YEAR_NS,
        "body": "City Data Bureau",
        "issued_ms": int(NOW * 1000),
    }
    terms.update(kw)
    return new_grant(**terms)  # type: ignore[arg-type]


def _tamper(signed: str, change: dict[str, object]) -> str:
    doc = json.loads(signed)
    payload = json.loads(jws._unb64(doc["payload"], "p"))
    payload.update(change)
    doc["payload"] = jws._b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    return json.dumps(doc)


def test_grant_terms_are_validated() -> None:
    with pytest.raises(InvalidRequest, match="at most 5 years"):
        _grant(end_ns=NOW_NS + FIVE_YEARS_NS + 1)
    assert _grant(end_ns=NOW_NS + FIVE_YEARS_NS)  # exactly five years is allowed
    with pytest.raises(InvalidRequest, match="after its start"):
        _grant(end_ns=NOW_NS)
    with pytest.raises(InvalidRequest, match="scope"):
        _grant(scope=[])
    with pytest.raises(InvalidRequest, match="purpose"):
        _grant(purposes=["Has Spaces"])
    with pytest.raises(InvalidRequest, match="granting body"):
        _grant(body="  ")


def test_a_grant_verifies_only_as_the_operator_signed_it() -> None:
    operator = ed25519.Ed25519PrivateKey.generate()
    forger = ed25519.Ed25519PrivateKey.generate()
    keys = {"operator": operator.public_key()}.__getitem__
    grant = _grant()
    signed = sign_grant(grant, "operator", operator)  # type: ignore[arg-type]
    assert verify_grant(signed, "operator", keys) == grant
    with pytest.raises(VerificationError):  # someone else's key
        verify_grant(sign_grant(grant, "operator", forger), "operator", keys)  # type: ignore[arg-type]
    with pytest.raises(VerificationError):  # a widened scope
        verify_grant(_tamper(signed, {"scope": ["traffic", "health"]}), "operator", keys)
    with pytest.raises((VerificationError, KeyError)):  # signed by another participant id
        verify_grant(sign_grant(grant, "ent-a", operator), "operator", keys)  # type: ignore[arg-type]


def test_revoked_grants_leave_the_token_attribute(db: Database) -> None:
    operator = ed25519.Ed25519PrivateKey.generate()
    store = GrantStore(db)
    kept, dropped = _grant(), _grant(scope=["health"])
    for g in (kept, dropped):
        store.add(g, sign_grant(g, "operator", operator))  # type: ignore[arg-type]
    store.revoke(dropped.id, "ended", now_ms=1)  # type: ignore[attr-defined]
    with pytest.raises(PreconditionFailed):
        store.revoke(dropped.id, "again", now_ms=2)  # type: ignore[attr-defined]
    with pytest.raises(NotFound):
        store.revoke("gr-missing", "x", now_ms=2)
    carried = json.loads(grants_attribute(store.list("ent-a", include_revoked=True)))
    assert [g["id"] for g in carried] == [kept.id]  # type: ignore[attr-defined]
    assert [r.grant.id for r in store.list("ent-a")] == [kept.id]  # type: ignore[attr-defined]


@pytest.fixture
def register(db: Database) -> Iterator[tuple[ConsentRegister, ed25519.Ed25519PrivateKey]]:
    key = ed25519.Ed25519PrivateKey.generate()
    clock = FixedClock(NOW)
    log = TransparencyLog(db, origin="tds/city/alice", actor="alice", signing_key=key, clock=clock)
    tags = {"records": ("health",), "scans": ("imaging",)}

    def product_tags(pid: str) -> tuple[str, ...]:
        if pid not in tags:
            raise NotFound(pid)
        return tags[pid]

    yield (
        ConsentRegister(
            participant="alice",
            db=db,
            signing_key=key,
            audit=log,
            clock=clock,
            product_tags=product_tags,
        ),
        key,
    )
    log.close()


def _give(reg: ConsentRegister, **kw: object) -> object:
    terms: dict[str, object] = {
        "recipient": "hosp",
        "purposes": ["treatment"],
        "method": "review",
        "categories": ["health"],
        "expires_ns": NOW_NS + YEAR_NS,
    }
    terms.update(kw)
    return reg.grant(**terms)  # type: ignore[arg-type]


def test_consent_is_signed_by_the_individual_and_tampering_shows(
    register: tuple[ConsentRegister, ed25519.Ed25519PrivateKey],
) -> None:
    reg, key = register
    record = _give(reg)
    keys = {"alice": key.public_key(), "mallory": ed25519.Ed25519PrivateKey.generate().public_key()}
    consent = verify_consent(record.signed, keys.__getitem__)  # type: ignore[attr-defined]
    assert consent.recipient == "hosp" and consent.subject == "alice"
    with pytest.raises(VerificationError):  # someone widens the purposes
        verify_consent(_tamper(record.signed, {"purposes": ["marketing"]}), keys.__getitem__)  # type: ignore[attr-defined]
    with pytest.raises(VerificationError):  # or claims it came from another individual
        verify_consent(_tamper(record.signed, {"subject": "mallory"}), keys.__getitem__)  # type: ignore[attr-defined]


def test_consent_terms_are_validated_and_nothing_is_kept_on_refusal(
    register: tuple[ConsentRegister, ed25519.Ed25519PrivateKey],
) -> None:
    reg, _ = register
    for bad in (
        {"expires_ns": NOW_NS},
        {"recipient": "alice"},
        {"method": ""},
        {"categories": []},
        {"recipient": "Not An Id"},
    ):
        with pytest.raises(InvalidRequest):
            _give(reg, **bad)
    assert reg.list() == []


def test_lookup_weighs_the_right_consent(
    register: tuple[ConsentRegister, ed25519.Ed25519PrivateKey],
) -> None:
    reg, _ = register
    assert reg.lookup("hosp", "records", "treatment") == {"present": False}
    old = _give(reg)
    live = _give(reg, purposes=["treatment", "research"])
    _give(reg, categories=["imaging"], recipient="other")
    reg.withdraw(old.consent.id)  # type: ignore[attr-defined]
    found = reg.lookup("hosp", "records", "treatment")
    assert found["present"] and not found["withdrawn"]
    assert found["id"] == live.consent.id  # type: ignore[attr-defined]
    reg.withdraw(live.consent.id, "no more")  # type: ignore[attr-defined]
    assert reg.lookup("hosp", "records", "treatment")["withdrawn"] is True
    assert reg.lookup("hosp", "scans", "treatment") == {"present": False}  # not covered
    assert reg.lookup("other", "scans", "treatment")["present"] is True
    assert reg.lookup("hosp", "unknown-product", "treatment") == {"present": False}
    with pytest.raises(PreconditionFailed):
        reg.withdraw(live.consent.id)  # type: ignore[attr-defined]


def test_lookup_for_a_recipient_without_consent_reads_no_product(db: Database) -> None:
    """The common case (no consent held by the recipient) is one read: the product's
    tags are not loaded; once the recipient holds one, even withdrawn, they are."""
    key = ed25519.Ed25519PrivateKey.generate()
    clock = FixedClock(NOW)
    log = TransparencyLog(db, origin="tds/city/alice", actor="alice", signing_key=key, clock=clock)
    read: list[str] = []

    def product_tags(pid: str) -> tuple[str, ...]:
        read.append(pid)
        return ("health",)

    reg = ConsentRegister(
        participant="alice",
        db=db,
        signing_key=key,
        audit=log,
        clock=clock,
        product_tags=product_tags,
    )
    try:
        assert reg.lookup("hosp", "records", "treatment") == {"present": False}
        _give(reg, recipient="other")
        assert reg.lookup("hosp", "records", "treatment") == {"present": False}
        assert read == []
        record = _give(reg)
        reg.withdraw(record.consent.id)  # type: ignore[attr-defined]
        found = reg.lookup("hosp", "records", "treatment")
        assert found["present"] is True and found["withdrawn"] is True
        assert read == ["records"]
    finally:
        log.close()
