"""C2SP checkpoints with extension lines: parsed, kept verbatim, signed and cosigned as received.

Issue 18, finding 12: they were refused, so a tds witness could not cosign a third-party
log that uses them. No conformance vector has extension lines (../shared/vectors holds
Merkle proofs and DSP schemas only), so the checkpoints here are built from the spec, and
the cosignature is checked with the raw key against the spec's message, not with
``verify_cosignature``.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import audit_pb2
from connector.audit.checkpoint import Checkpoint, open_checkpoint, verify_cosignature
from connector.audit.note import ALG_COSIGNATURE_V1, Verifier, parse_note, sign_note, vkey
from connector.audit.witness import FileWitnessState, Witness
from connector.clock import FixedClock
from connector.errors import VerificationError
from tests.unit.audit.independent_note import verify_signed_note

ORIGIN = "example.com/other-log"
LOG_KEY = ed25519.Ed25519PrivateKey.generate()
LOG = Verifier.ed25519(ORIGIN, LOG_KEY.public_key())
ROOT = base64.b64encode(bytes(range(32))).decode()
BODY = f"{ORIGIN}\n42\n{ROOT}\nrekor-shard 3\n\u2014 not a signature, just text\n"
WITNESS_KEY = ed25519.Ed25519PrivateKey.generate()
WITNESS = Verifier.ed25519("tds/city/aud", WITNESS_KEY.public_key(), ALG_COSIGNATURE_V1)
NOW = 1_800_000_000


def test_extension_lines_are_parsed_and_kept_verbatim() -> None:
    note = sign_note(BODY, ORIGIN, LOG_KEY)
    checkpoint, parsed = open_checkpoint(note, LOG)
    assert (checkpoint.size, checkpoint.root) == (42, bytes(range(32)))
    assert checkpoint.extensions == ("rekor-shard 3", "\u2014 not a signature, just text")
    assert checkpoint.body() == parsed.text == BODY
    assert verify_signed_note(note, vkey(LOG)) == BODY


class ThirdPartyLog:
    """A log that is not a tds connector, offering its checkpoint over the Cosign stream."""

    def __init__(self, note: str) -> None:
        self.note = note

    def Cosign(
        self, requests: Iterator[audit_pb2.CosignRequest], timeout: float
    ) -> Iterator[audit_pb2.CosignResponse]:
        next(requests)  # last_seen
        yield audit_pb2.CosignResponse(offer=audit_pb2.Offer(checkpoint=self.note))
        answer = next(requests)
        self.note = self.note + answer.cosignature + "\n"
        yield audit_pb2.CosignResponse(cosigned_checkpoint=self.note)


def test_a_witness_cosigns_the_exact_received_text(tmp_path: Path) -> None:
    log = ThirdPartyLog(sign_note(BODY, ORIGIN, LOG_KEY))
    witness = Witness(
        WITNESS.name, WITNESS_KEY, FileWitnessState(tmp_path / "witness"), FixedClock(NOW)
    )
    result = witness.cosign_log(log, LOG)
    assert result.checkpoint.extensions and parse_note(result.note).text == BODY
    line = next(s for s in parse_note(log.note).signatures if s.name == WITNESS.name)
    # The spec's message, built from the received bytes, checked with the raw key.
    assert line.signature[:8] == struct.pack(">Q", NOW)
    WITNESS_KEY.public_key().verify(
        line.signature[8:], f"cosignature/v1\ntime {NOW}\n".encode() + BODY.encode()
    )
    assert verify_cosignature(result.checkpoint, line, WITNESS) == NOW
    # The witness remembers the checkpoint with its extension lines.
    seen = FileWitnessState(tmp_path / "witness").get(ORIGIN)
    assert seen is not None and seen.checkpoint == result.checkpoint


def test_an_altered_extension_line_breaks_signature_and_cosignature(tmp_path: Path) -> None:
    note = sign_note(BODY, ORIGIN, LOG_KEY)
    checkpoint, _ = open_checkpoint(note, LOG)
    witness = Witness(WITNESS.name, WITNESS_KEY, FileWitnessState(tmp_path), FixedClock(NOW))
    result = witness.cosign_log(ThirdPartyLog(note), LOG)
    line = next(s for s in parse_note(result.note).signatures if s.name == WITNESS.name)
    altered = note.replace("rekor-shard 3", "rekor-shard 4")
    with pytest.raises(VerificationError, match="does not verify"):
        open_checkpoint(altered, LOG)
    changed = Checkpoint.parse(parse_note(altered).text)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_cosignature(changed, line, WITNESS)
    dropped = Checkpoint(checkpoint.origin, checkpoint.size, checkpoint.root)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_cosignature(dropped, line, WITNESS)


@pytest.mark.parametrize(
    "body, message",
    [
        (f"{ORIGIN}\n42\n{ROOT}\nfine\n\n", "must not be empty"),
        (f"{ORIGIN}\n\u0664\u0662\n{ROOT}\n", "decimal"),  # Arabic-Indic 42 would re-render
        (f"{ORIGIN}\n42\n{ROOT[:-2]}B=\n", "standard base64"),  # non-zero padding bits
        (f"{ORIGIN}\n42\n{ROOT}\next", "newline"),
    ],
)
def test_checkpoints_that_would_not_render_back_exactly_are_refused(
    body: str, message: str
) -> None:
    with pytest.raises(VerificationError, match=message):
        Checkpoint.parse(body)
