"""Checkpoints (c2sp.org/tlog-checkpoint) and witness cosignatures (c2sp.org/tlog-cosignature).

A checkpoint body is ``<origin>\\n<size>\\n<base64 root>\\n``, then any non-empty
extension lines the log adds (tds logs add none; other logs may); the log signs it as a
note under the key name equal to its origin ``tds/<space>/<participant>``. A witness adds
a ``cosignature/v1`` line: Ed25519 over ``cosignature/v1\\ntime <t>\\n`` + the body,
extension lines included, the signature bytes prefixed by the big-endian 64-bit time.
Parsing is canonical, so the body rendered again is the received text, byte for byte:
what is verified and cosigned is exactly what the log signed.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.merkle import HASH_SIZE
from connector.audit.note import (
    ALG_COSIGNATURE_V1,
    Note,
    NoteSignature,
    Verifier,
    parse_note,
    sign_note,
    signature_line,
)
from connector.errors import VerificationError

__all__ = [
    "Checkpoint",
    "cosign",
    "log_origin",
    "open_checkpoint",
    "sign_checkpoint",
    "verify_cosignature",
]


def log_origin(space: str, participant: str) -> str:
    """The origin line (and key name) of a connector's log."""
    return f"tds/{space}/{participant}"


@dataclass(frozen=True)
class Checkpoint:
    """A tree size and root hash, as a log commits to them, with its extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()
    """Lines after the root hash, verbatim without their newlines (C2SP allows them)."""

    def body(self) -> str:
        """The note text."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode()]
        return "".join(f"{line}\n" for line in (*lines, *self.extensions))

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body: origin, size and root lines, then extension lines."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise VerificationError(
                "checkpoint must be origin, size and root lines (then any extension lines), "
                "each ending in a newline"
            )
        origin, size, root = lines[:3]
        extensions = tuple(lines[3:-1])
        if not origin:
            raise VerificationError("checkpoint origin is empty")
        if not (size.isascii() and size.isdigit()) or (len(size) > 1 and size[0] == "0"):
            raise VerificationError(f"checkpoint size {size!r} is not a decimal number")
        try:
            raw = base64.b64decode(root, validate=True)
        except binascii.Error:
            raise VerificationError("checkpoint root is not base64") from None
        if len(raw) != HASH_SIZE or base64.b64encode(raw).decode() != root:
            raise VerificationError("checkpoint root is not a SHA-256 hash in standard base64")
        if any(not line for line in extensions):
            raise VerificationError("checkpoint extension lines must not be empty")
        checkpoint = cls(origin, int(size), raw, extensions)
        # Cosignatures and signatures cover the text as received: never a re-rendering.
        if checkpoint.body() != text:
            raise VerificationError("checkpoint is not in canonical form")
        return checkpoint


def sign_checkpoint(checkpoint: Checkpoint, key: ed25519.Ed25519PrivateKey) -> str:
    """The checkpoint as a note signed by the log under its origin."""
    return sign_note(checkpoint.body(), checkpoint.origin, key)


def open_checkpoint(note_text: str | bytes, log_key: Verifier) -> tuple[Checkpoint, Note]:
    """Verify the log's signature on a checkpoint note and parse it."""
    note = parse_note(note_text)
    note.verify(log_key)
    checkpoint = Checkpoint.parse(note.text)
    if checkpoint.origin != log_key.name:
        raise VerificationError(
            f"checkpoint origin {checkpoint.origin!r} is not the log's {log_key.name!r}"
        )
    return checkpoint, note


def _cosigned_message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def cosign(
    checkpoint: Checkpoint, name: str, key: ed25519.Ed25519PrivateKey, timestamp: int
) -> NoteSignature:
    """A witness's cosignature line on ``checkpoint``."""
    if not 0 <= timestamp < 2**63:
        raise VerificationError("cosignature time out of range")
    return signature_line(
        name,
        key,
        _cosigned_message(checkpoint.body(), timestamp),
        ALG_COSIGNATURE_V1,
        struct.pack(">Q", timestamp),
    )


def verify_cosignature(checkpoint: Checkpoint, signature: NoteSignature, witness: Verifier) -> int:
    """Verify a cosignature line by ``witness``; return its timestamp."""
    if witness.alg != ALG_COSIGNATURE_V1:
        raise VerificationError("cosignatures need a cosignature/v1 (0x04) verifier key")
    if signature.name != witness.name or signature.key_id != witness.key_id:
        raise VerificationError(f"signature is not by witness {witness.name}")
    if len(signature.signature) != 8 + 64:
        raise VerificationError("cosignature must be an 8-byte time and a 64-byte signature")
    (timestamp,) = struct.unpack(">Q", signature.signature[:8])
    if timestamp >= 2**63:
        raise VerificationError("cosignature time out of range")
    key = ed25519.Ed25519PublicKey.from_public_bytes(witness.public_key)
    try:
        key.verify(signature.signature[8:], _cosigned_message(checkpoint.body(), timestamp))
    except InvalidSignature:
        raise VerificationError(f"cosignature by {witness.name} does not verify") from None
    return int(timestamp)
