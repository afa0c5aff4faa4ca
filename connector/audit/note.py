"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, and verifier keys (vkeys).

A note is text ending in a newline, a blank line, then signature lines
``— <key name> base64(key ID || signature)``. Parsing is strict: valid UTF-8, no control
characters but newline, well-formed signature lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.errors import VerificationError
from connector.identity.certs import raw_public_key

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "Note",
    "NoteSignature",
    "Verifier",
    "key_id",
    "parse_note",
    "parse_vkey",
    "sign_note",
    "signature_line",
    "vkey",
]

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
_DASH = "\u2014 "
MAX_SIGNATURES = 64


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise VerificationError(f"invalid key name {name!r}: no spaces or '+' allowed")
    return name


def key_id(name: str, alg: int, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || alg || public key)[:4]``."""
    return hashlib.sha256(_check_name(name).encode() + b"\n" + bytes([alg]) + public_key).digest()[
        :4
    ]


@dataclass(frozen=True)
class Verifier:
    """A named public key that verifies note signatures of one type."""

    name: str
    alg: int
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID signature lines carry."""
        return key_id(self.name, self.alg, self.public_key)

    @classmethod
    def ed25519(cls, name: str, key: ed25519.Ed25519PublicKey, alg: int = ALG_ED25519) -> Verifier:
        """A verifier for an Ed25519 key (``alg`` 0x01 notes or 0x04 cosignatures)."""
        return cls(_check_name(name), alg, raw_public_key(key))


def vkey(verifier: Verifier) -> str:
    """The verifier key string ``name+hex(key ID)+base64(alg || public key)``."""
    data = base64.b64encode(bytes([verifier.alg]) + verifier.public_key).decode()
    return f"{verifier.name}+{verifier.key_id.hex()}+{data}"


def parse_vkey(text: str) -> Verifier:
    """Parse a verifier key, checking that its key ID matches its key."""
    name, sep1, rest = text.strip().partition("+")
    hexid, sep2, data = rest.partition("+")
    if not (sep1 and sep2):
        raise VerificationError("verifier key must be name+keyid+base64key")
    try:
        raw = base64.b64decode(data, validate=True)
        wanted = bytes.fromhex(hexid)
    except (binascii.Error, ValueError):
        raise VerificationError("verifier key has a malformed key ID or key") from None
    if len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise VerificationError("verifier key is not an Ed25519 key")
    verifier = Verifier(_check_name(name), raw[0], raw[1:])
    if verifier.key_id != wanted:
        raise VerificationError("verifier key ID does not match its key")
    return verifier


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the key name, key ID and signature bytes after the ID."""

    name: str
    key_id: bytes
    signature: bytes

    @property
    def line(self) -> str:
        """The signature line, newline included."""
        blob = base64.b64encode(self.key_id + self.signature).decode()
        return f"{_DASH}{self.name} {blob}\n"


@dataclass(frozen=True)
class Note:
    """A parsed note: its text (final newline included) and its signatures."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def render(self) -> str:
        """The note as bytes on the wire would spell it."""
        return self.text + "\n" + "".join(s.line for s in self.signatures)

    def signed_by(self, verifier: Verifier) -> list[NoteSignature]:
        """Signatures whose name and key ID match ``verifier``."""
        return [
            s for s in self.signatures if s.name == verifier.name and s.key_id == verifier.key_id
        ]

    def verify(self, verifier: Verifier) -> None:
        """Raise unless an Ed25519 (0x01) signature by ``verifier`` verifies over the text."""
        if verifier.alg != ALG_ED25519:
            raise VerificationError("note signatures use Ed25519 (0x01) verifier keys")
        matching = self.signed_by(verifier)
        if not matching:
            raise VerificationError(f"note has no signature by {verifier.name}")
        key = ed25519.Ed25519PublicKey.from_public_bytes(verifier.public_key)
        for sig in matching:
            try:
                key.verify(sig.signature, self.text.encode())
            except InvalidSignature:
                raise VerificationError(f"signature by {verifier.name} does not verify") from None


def signature_line(
    name: str,
    key: ed25519.Ed25519PrivateKey,
    message: bytes,
    alg: int = ALG_ED25519,
    prefix: bytes = b"",
) -> NoteSignature:
    """Sign ``message``; ``prefix`` goes between key ID and signature (cosignature time)."""
    kid = key_id(name, alg, raw_public_key(key.public_key()))
    return NoteSignature(name, kid, prefix + key.sign(message))


def sign_note(text: str, name: str, key: ed25519.Ed25519PrivateKey) -> str:
    """A note of ``text`` signed by ``key`` under ``name``."""
    if not text.endswith("\n"):
        raise VerificationError("note text must end with a newline")
    return Note(text, (signature_line(name, key, text.encode()),)).render()


def parse_note(note: str | bytes) -> Note:
    """Parse a signed note strictly (no signature is verified here)."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise VerificationError("note is not valid UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise VerificationError("note contains control characters")
    split = note.rfind("\n\n")
    if split < 0:
        raise VerificationError("note has no blank line before its signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    if not sig_block.endswith("\n"):
        raise VerificationError("note must end with a newline")
    signatures: list[NoteSignature] = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(_DASH):
            raise VerificationError(f"malformed signature line {line[:40]!r}")
        name, sep, blob = line[len(_DASH) :].partition(" ")
        if not sep or " " in blob:
            raise VerificationError(f"malformed signature line {line[:40]!r}")
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error:
            raise VerificationError("signature is not base64") from None
        # Padding bits of the last character are ignored by decoding: a line whose text
        # differs from the canonical encoding is another note than the one signed.
        if base64.b64encode(raw).decode() != blob:
            raise VerificationError("signature is not canonical base64")
        if len(raw) < 5:
            raise VerificationError("signature is too short")
        signatures.append(NoteSignature(_check_name(name), raw[:4], raw[4:]))
    if not signatures:
        raise VerificationError("note has no signatures")
    if len(signatures) > MAX_SIGNATURES:
        raise VerificationError(f"note has more than {MAX_SIGNATURES} signatures")
    return Note(text, tuple(signatures))
