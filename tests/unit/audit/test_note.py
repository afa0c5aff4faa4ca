"""Signed notes and checkpoints: strict parsing and the cosignature format."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.checkpoint import (
    Checkpoint,
    cosign,
    open_checkpoint,
    sign_checkpoint,
    verify_cosignature,
)
from connector.audit.note import (
    ALG_COSIGNATURE_V1,
    Verifier,
    parse_note,
    parse_vkey,
    sign_note,
    vkey,
)
from connector.errors import VerificationError
from tests.unit.audit.independent_note import verify_signed_note

KEY = ed25519.Ed25519PrivateKey.generate()
LOG = Verifier.ed25519("tds/city/a", KEY.public_key())
CP = Checkpoint("tds/city/a", 7, bytes(range(32)))


def test_checkpoint_round_trip_and_independent_check() -> None:
    note = sign_checkpoint(CP, KEY)
    assert open_checkpoint(note, LOG)[0] == CP
    assert verify_signed_note(note, vkey(LOG)) == CP.body()
    assert parse_vkey(vkey(LOG)) == LOG


@pytest.mark.parametrize(
    "note, message",
    [
        ("text\n— a AAAAAAA=\n", "blank line"),
        ("text\n\n— a AAAAAAA=", "newline"),
        ("text\n\n- a AAAAAAA=\n", "malformed"),
        ("text\n\n— a not*base64\n", "base64"),
        ("te\x01xt\n\n— a AAAAAAA=\n", "control"),
        ("text\n\n— a AA==\n", "too short"),
    ],
)
def test_malformed_notes_are_refused(note: str, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        parse_note(note)


def test_note_by_another_key_or_name_is_refused() -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(VerificationError, match="no signature"):
        open_checkpoint(sign_checkpoint(CP, other), LOG)
    with pytest.raises(VerificationError, match="origin"):
        open_checkpoint(
            sign_note(CP.body(), "tds/city/b", KEY),
            Verifier.ed25519("tds/city/b", KEY.public_key()),
        )


@pytest.mark.parametrize(
    "body",
    [
        "a\n7\n\n",
        "a\n07\nAAAA\n",
        "a\n7\nAAAA\n",
        "a\n7\n" + base64.b64encode(bytes(32)).decode() + "\n\n",  # empty extension line
    ],
)
def test_malformed_checkpoints_are_refused(body: str) -> None:
    with pytest.raises(VerificationError):
        Checkpoint.parse(body)


def test_cosignature_round_trip_and_wrong_checkpoint() -> None:
    wkey = ed25519.Ed25519PrivateKey.generate()
    witness = Verifier.ed25519("tds/city/aud", wkey.public_key(), ALG_COSIGNATURE_V1)
    sig = cosign(CP, "tds/city/aud", wkey, 1_800_000_000)
    assert verify_cosignature(CP, sig, witness) == 1_800_000_000
    with pytest.raises(VerificationError):
        verify_cosignature(Checkpoint(CP.origin, 8, CP.root), sig, witness)
    with pytest.raises(VerificationError, match="0x04"):
        verify_cosignature(CP, sig, Verifier.ed25519("tds/city/aud", wkey.public_key()))
