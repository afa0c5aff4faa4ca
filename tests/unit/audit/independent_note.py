"""An independent C2SP signed-note verifier, written from the spec for the tests only.

It shares no code with ``connector.audit``: it parses the vkey and the note by hand and
checks the Ed25519 signature with the key ID computed as the spec says.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def verify_signed_note(note: str, vkey: str) -> str:
    """Return the note text if a signature by ``vkey`` verifies; raise ``ValueError``."""
    name, key_hash, key_b64 = vkey.split("+", 2)
    key_data = base64.b64decode(key_b64)
    if key_data[0] != 0x01 or len(key_data) != 33:
        raise ValueError("not an Ed25519 vkey")
    key_id = hashlib.sha256(name.encode() + b"\n" + key_data).digest()[:4]
    if key_id.hex() != key_hash:
        raise ValueError("vkey hash mismatch")
    text, _, signatures = note.rpartition("\n\n")
    text += "\n"
    for line in signatures.splitlines():
        dash, signer, blob = line.split(" ")
        if dash != "\u2014":
            raise ValueError("bad signature line")
        raw = base64.b64decode(blob)
        if signer == name and raw[:4] == key_id:
            Ed25519PublicKey.from_public_bytes(key_data[1:]).verify(raw[4:], text.encode())
            return text
    raise ValueError("no signature by the key")
