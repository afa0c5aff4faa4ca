"""The provider's stored agreements: a verification is remembered only for the exact text,
parties and counterparty key it checked; a refusal is never remembered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.log import TransparencyLog
from connector.clock import FixedClock
from connector.errors import VerificationError
from connector.negotiation.agreement import countersign_agreement, sign_agreement
from connector.negotiation.states import State
from connector.negotiation.store import PROVIDER, Negotiation
from connector.negotiation.stored import StoredAgreements
from connector.store.database import open_database
from tests.support.exchange import altered
from tests.unit.negotiation.test_agreement import AGREEMENT, KEYS


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[TransparencyLog]:
    db = open_database(f"sqlite:///{tmp_path / 'gov.db'}")
    log = TransparencyLog(
        db, origin="tds/city/gov", actor="gov", signing_key=KEYS["gov"], clock=FixedClock(1)
    )
    yield log
    log.close()
    db.close()


def _refusals(audit: TransparencyLog) -> int:
    return sum(b'"agreement.unverified"' in entry for _, entry in audit.entries(0, audit.size))


def test_a_remembered_verification_holds_only_for_the_text_and_key_it_checked(
    audit: TransparencyLog,
) -> None:
    directory: dict[str, ed25519.Ed25519PublicKey] = {"ent-a": KEYS["ent-a"].public_key()}
    stored = StoredAgreements(
        participant="gov", signing_key=KEYS["gov"], keys=directory.__getitem__, audit=audit
    )
    signed = countersign_agreement(
        sign_agreement(AGREEMENT, KEYS["gov"]),
        KEYS["ent-a"],
        lambda who: KEYS[who].public_key(),
    )
    n = Negotiation(
        pid="p-1",
        role=PROVIDER,
        counterparty="ent-a",
        counterparty_pid="c-1",
        product=AGREEMENT.product,
        offer=AGREEMENT.offer,
        purpose=AGREEMENT.purpose,
        state=State.FINALIZED,
        agreement_id=AGREEMENT.id,
        agreement=signed,
    )
    assert stored.verified(n, "compute.run") == AGREEMENT
    assert stored.verified(n, "compute.run") == AGREEMENT  # remembered

    # The row edited behind the connector's back: other text, verified anew and refused,
    # every time (a refusal is not remembered), and logged each time.
    edited = replace(n, agreement=altered(signed, product="secret"))
    for _ in range(2):
        with pytest.raises(VerificationError, match="does not verify"):
            stored.verified(edited, "compute.run")
    assert _refusals(audit) == 2
    # Another row naming this agreement for another consumer is not served from memory.
    with pytest.raises(VerificationError):
        stored.verified(replace(n, counterparty="mallory"), "compute.run")

    # The counterparty's key in the directory changed: its countersignature is checked
    # against the key in force, not taken from memory.
    directory["ent-a"] = KEYS["mallory"].public_key()
    with pytest.raises(VerificationError, match="does not verify"):
        stored.verified(n, "compute.run")
    directory["ent-a"] = KEYS["ent-a"].public_key()
    assert stored.verified(n, "compute.run") == AGREEMENT
