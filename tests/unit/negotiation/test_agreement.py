"""Agreements: provider signs, consumer countersigns, both verify offline; forgery fails."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit import jws
from connector.errors import PreconditionFailed, VerificationError
from connector.negotiation.agreement import (
    Agreement,
    countersign_agreement,
    countersigned_agreement,
    parse_agreement,
    parsed_agreement,
    sign_agreement,
    verify_agreement,
    verify_provider_signature,
    verify_returned_agreement,
    verify_stored_agreement,
)
from connector.negotiation.states import State, check_transition
from tests.support.exchange import altered

KEYS = {p: ed25519.Ed25519PrivateKey.generate() for p in ("gov", "ent-a", "mallory")}
AGREEMENT = Agreement(
    id="ag-1",
    provider="gov",
    consumer="ent-a",
    product="traffic-flow",
    offer="planning-2026",
    purpose="planning",
    valid_from_ns=1_767_225_600_000_000_000,
    valid_until_ns=1_798_761_600_000_000_000,
    max_transfers=12,
    max_bytes=1 << 30,
    policy_revision="ab" * 32,
    provider_pid="p-1",
    consumer_pid="c-1",
    issued_ms=1,
    obligations={"delete_after_ns": 1_798_761_600_000_000_000},
    permitted_fields=("road", "time"),
    masks={"road": {"method": "redact"}},
    registration_code="SH-1",
)


def public(p: str) -> ed25519.Ed25519PublicKey:
    return KEYS[p].public_key()


def test_round_trip_with_nanosecond_times() -> None:
    signed = sign_agreement(AGREEMENT, KEYS["gov"])
    assert verify_provider_signature(signed, public) == AGREEMENT
    both = countersign_agreement(signed, KEYS["ent-a"], public)
    assert verify_agreement(both, public) == AGREEMENT
    assert parse_agreement(both).obligations["delete_after_ns"] == 1_798_761_600_000_000_000


def test_forged_or_altered_agreements_fail() -> None:
    signed = sign_agreement(AGREEMENT, KEYS["mallory"])
    with pytest.raises(VerificationError, match="provider's signature"):
        verify_provider_signature(signed, public)
    good = sign_agreement(AGREEMENT, KEYS["gov"])
    with pytest.raises(VerificationError):
        verify_provider_signature(altered(good, max_transfers=1000), public)


def test_countersignature_by_the_wrong_key_fails() -> None:
    signed = sign_agreement(AGREEMENT, KEYS["gov"])
    wrong = countersign_agreement(signed, KEYS["mallory"], public)
    with pytest.raises(VerificationError, match="consumer's signature"):
        verify_agreement(wrong, public)
    with pytest.raises(VerificationError, match="provider's and consumer's"):
        verify_agreement(signed, public)


def test_countersigning_checks_the_provider_first() -> None:
    forged = sign_agreement(replace(AGREEMENT, provider="gov"), KEYS["mallory"])
    with pytest.raises(VerificationError):
        countersign_agreement(forged, KEYS["ent-a"], public)


def test_countersigned_agreement_gives_the_terms_it_verified() -> None:
    signed = sign_agreement(AGREEMENT, KEYS["gov"])
    agreement, both = countersigned_agreement(signed, KEYS["ent-a"], public)
    assert agreement == AGREEMENT and verify_agreement(both, public) == AGREEMENT


def test_countersigned_agreement_takes_terms_parsed_from_the_same_text_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signed = sign_agreement(AGREEMENT, KEYS["gov"])
    parsed = parsed_agreement(signed)
    parses: list[str] = []
    real = parse_agreement

    def counted(text: str) -> Agreement:
        parses.append(text)
        return real(text)

    monkeypatch.setattr("connector.negotiation.agreement.parse_agreement", counted)
    # Parsed from this very text: not parsed again, and the signature still verified.
    agreement, both = countersigned_agreement(signed, KEYS["ent-a"], public, parsed=parsed)
    assert parses == [] and agreement == AGREEMENT
    assert verify_agreement(both, public) == AGREEMENT
    forged = sign_agreement(AGREEMENT, KEYS["mallory"])
    with pytest.raises(VerificationError, match="provider's signature"):
        countersigned_agreement(forged, KEYS["ent-a"], public, parsed=parsed_agreement(forged))
    # Terms parsed from another text are not taken for this one's: it is parsed itself.
    del parses[:]
    other = sign_agreement(replace(AGREEMENT, max_transfers=1000), KEYS["gov"])
    agreement, _ = countersigned_agreement(other, KEYS["ent-a"], public, parsed=parsed)
    assert parses == [other] and agreement.max_transfers == 1000
    # A genuine agreement's terms handed over with a forged text: the forgery is refused.
    with pytest.raises(VerificationError, match="provider's signature"):
        countersigned_agreement(
            sign_agreement(replace(AGREEMENT, max_transfers=1000), KEYS["mallory"]),
            KEYS["ent-a"],
            public,
            parsed=parsed,
        )


def test_the_provider_takes_back_only_its_own_agreement_countersigned() -> None:
    sent = sign_agreement(AGREEMENT, KEYS["gov"])
    both = countersign_agreement(sent, KEYS["ent-a"], public)
    # The genuine one passes.
    verify_returned_agreement(both, sent, public, provider="gov", consumer="ent-a")

    by_mallory = countersign_agreement(sent, KEYS["mallory"], public)
    with pytest.raises(VerificationError, match="consumer's signature"):
        verify_returned_agreement(by_mallory, sent, public, provider="gov", consumer="ent-a")
    with pytest.raises(VerificationError, match="consumer's"):  # countersigned as another
        verify_returned_agreement(both, sent, public, provider="gov", consumer="mallory")
    # Other terms under the same signatures, or another agreement of the provider's.
    with pytest.raises(VerificationError, match="differs from the one sent"):
        verify_returned_agreement(
            altered(both, max_transfers=1000), sent, public, provider="gov", consumer="ent-a"
        )
    other = sign_agreement(replace(AGREEMENT, id="ag-2"), KEYS["gov"])
    other_both = countersign_agreement(other, KEYS["ent-a"], public)
    with pytest.raises(VerificationError, match="differs from the one sent"):
        verify_returned_agreement(other_both, sent, public, provider="gov", consumer="ent-a")
    with pytest.raises(VerificationError, match="two signatures"):
        verify_returned_agreement(sent, sent, public, provider="gov", consumer="ent-a")
    # A valid consumer signature over these terms that binds another provider signature.
    doc = json.loads(both)
    header = {"alg": "EdDSA", "kid": "ent-a", "tds_role": "consumer", "tds_countersigns": "x"}
    doc["signatures"][1] = jws._signature(doc["payload"], header, KEYS["ent-a"])
    with pytest.raises(VerificationError, match="does not countersign"):
        verify_returned_agreement(json.dumps(doc), sent, public, provider="gov", consumer="ent-a")
    with pytest.raises(VerificationError, match="not JSON"):
        verify_returned_agreement("{", sent, public, provider="gov", consumer="ent-a")


def test_a_stored_agreement_is_used_only_if_it_verifies_as_the_one_asked_for() -> None:
    """Issue 18 finding 3: the provider acted on whatever its database held."""
    both = countersign_agreement(sign_agreement(AGREEMENT, KEYS["gov"]), KEYS["ent-a"], public)
    mine = {"agreement_id": "ag-1", "provider": "gov", "consumer": "ent-a"}
    assert verify_stored_agreement(both, public, **mine) == AGREEMENT
    other = countersign_agreement(
        sign_agreement(replace(AGREEMENT, id="ag-2", consumer="mallory"), KEYS["gov"]),
        KEYS["mallory"],
        public,
    )
    for stored in (
        altered(both, product="other-product"),  # the terms edited under the signatures
        altered(both, max_transfers=0),
        other,  # another consumer's valid agreement copied into the row
        sign_agreement(AGREEMENT, KEYS["gov"]),  # never countersigned
        countersign_agreement(sign_agreement(AGREEMENT, KEYS["gov"]), KEYS["mallory"], public),
        "{}",
    ):
        with pytest.raises(VerificationError, match="the stored agreement ag-1 does not verify"):
            verify_stored_agreement(stored, public, **mine)
    with pytest.raises(VerificationError) as err:  # the row names another consumer
        verify_stored_agreement(other, public, **{**mine, "agreement_id": "ag-2"})
    assert "mallory" not in str(err.value)  # nothing of it goes back to the caller
    # Before the countersignature (AGREED), the provider's own signature alone.
    single = sign_agreement(AGREEMENT, KEYS["gov"])
    assert verify_stored_agreement(single, public, **mine, countersigned=False) == AGREEMENT
    with pytest.raises(VerificationError, match="does not verify"):
        verify_stored_agreement(
            altered(single, purpose="marketing"), public, **mine, countersigned=False
        )


@pytest.mark.parametrize(
    "current, new, ok",
    [
        (State.REQUESTED, State.AGREED, True),
        (State.REQUESTED, State.OFFERED, True),
        (State.OFFERED, State.REQUESTED, True),
        (State.OFFERED, State.ACCEPTED, True),
        (State.AGREED, State.VERIFIED, True),
        (State.VERIFIED, State.FINALIZED, True),
        (State.VERIFIED, State.TERMINATED, True),
        (State.REQUESTED, State.FINALIZED, False),
        (State.AGREED, State.REQUESTED, False),
        (State.FINALIZED, State.TERMINATED, False),
        (State.TERMINATED, State.REQUESTED, False),
    ],
)
def test_transitions(current: State, new: State, ok: bool) -> None:
    if ok:
        check_transition(current, new)
    else:
        with pytest.raises(PreconditionFailed):
            check_transition(current, new)


def test_delivery_terms_are_signed_and_plain_copies_keep_their_payload() -> None:
    # An agreement without delivery terms signs exactly what it signed before they existed.
    assert b"delivery" not in AGREEMENT.payload() and b"compute" not in AGREEMENT.payload()
    rules = {"k": 10, "dimensions": {}, "measures": {}, "max_groups": 1000}
    compute = replace(AGREEMENT, delivery=("compute",), compute=rules)
    signed = countersign_agreement(
        sign_agreement(compute, KEYS["gov"]),
        KEYS["ent-a"],
        public,
    )
    back = verify_agreement(signed, public)
    assert back.delivery == ("compute",) and back.compute == rules
    # Widening the terms after signing breaks the provider's signature.
    with pytest.raises(VerificationError):
        verify_agreement(altered(signed, delivery=["copy", "compute"]), public)


def test_stream_limits_are_signed_and_agreements_without_them_keep_their_payload() -> None:
    assert b"max_messages" not in AGREEMENT.payload()
    assert b"per_period" not in AGREEMENT.payload()
    per_period = {"period": "hour", "max_messages": 100, "max_bytes": 0}
    limited = replace(AGREEMENT, max_messages=1000, per_period=per_period)
    signed = countersign_agreement(sign_agreement(limited, KEYS["gov"]), KEYS["ent-a"], public)
    back = verify_agreement(signed, public)
    assert (back.max_messages, back.per_period) == (1000, per_period)
    # Raising a limit after signing breaks the provider's signature.
    with pytest.raises(VerificationError):
        verify_agreement(altered(signed, max_messages=10**6), public)
    with pytest.raises(VerificationError):
        verify_agreement(altered(signed, per_period={**per_period, "max_messages": 10**6}), public)
