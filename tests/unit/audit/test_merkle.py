"""Merkle trees: the shared RFC 6962/9162 vectors, and proofs checked against each other."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest

from connector.audit import merkle
from connector.errors import VerificationError

VECTORS = Path(__file__).resolve().parents[4] / "shared" / "vectors" / "merkle"


def _vectors(kind: str) -> list[Any]:
    if not VECTORS.is_dir():
        return [
            pytest.param(
                None, marks=pytest.mark.skip(reason=f"conformance vectors not found at {VECTORS}")
            )
        ]
    files = sorted((VECTORS / kind).rglob("*.json"))
    return [pytest.param(json.loads(f.read_text()), id=str(f.relative_to(VECTORS))) for f in files]


def _b(values: list[str] | None) -> list[bytes]:
    return [base64.b64decode(v) for v in values or []]


def _one(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


@pytest.mark.parametrize("vector", _vectors("inclusion"))
def test_inclusion_vectors(vector: dict[str, Any]) -> None:
    def verify() -> None:
        merkle.verify_inclusion(
            _one(vector["leafHash"]),
            vector["leafIdx"],
            vector["treeSize"],
            _b(vector["proof"]),
            _one(vector["root"]),
        )

    if vector["wantErr"]:
        with pytest.raises(VerificationError):
            verify()
    else:
        verify()


@pytest.mark.parametrize("vector", _vectors("consistency"))
def test_consistency_vectors(vector: dict[str, Any]) -> None:
    def verify() -> None:
        merkle.verify_consistency(
            vector["size1"],
            vector["size2"],
            _b(vector["proof"]),
            _one(vector["root1"]),
            _one(vector["root2"]),
        )

    if vector["wantErr"]:
        with pytest.raises(VerificationError):
            verify()
    else:
        verify()


def leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"entry {i}".encode()) for i in range(n)]


def test_known_roots() -> None:
    # RFC 6962 reference tree from the certificate-transparency test data.
    data = [
        bytes.fromhex(h)
        for h in [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
    ]
    hashes = [merkle.leaf_hash(d) for d in data]
    assert merkle.root(hashes).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )
    assert merkle.root([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 64, 100])
def test_every_generated_proof_verifies(size: int) -> None:
    hashes = leaves(size)
    r = merkle.root(hashes)
    for i in range(size):
        merkle.verify_inclusion(hashes[i], i, size, merkle.inclusion_proof(i, hashes), r)
    for m in range(1, size + 1):
        proof = merkle.consistency_proof(m, hashes)
        merkle.verify_consistency(m, size, proof, merkle.root(hashes[:m]), r)


def test_random_mutations_of_proofs_are_rejected() -> None:
    rng = random.Random(7)
    for _ in range(300):
        size = rng.randint(2, 200)
        hashes = leaves(size)
        r = merkle.root(hashes)
        i = rng.randrange(size)
        proof = merkle.inclusion_proof(i, hashes)
        bad = list(proof)
        j = rng.randrange(len(bad))
        bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(hashes[i], i, size, bad, r)
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(hashes[i], i, size, proof[:-1], r)
        with pytest.raises(VerificationError):
            merkle.verify_inclusion(hashes[i], i, size, [*proof, proof[0]], r)
        m = rng.randint(1, size - 1)
        cproof = merkle.consistency_proof(m, hashes)
        j = rng.randrange(len(cproof))
        cbad = list(cproof)
        cbad[j] = bytes(32)
        with pytest.raises(VerificationError):
            merkle.verify_consistency(m, size, cbad, merkle.root(hashes[:m]), r)


@pytest.mark.parametrize(
    "args",
    [
        (b"x" * 31, 0, 1, [], b"r" * 32),
        (b"x" * 32, 0, 0, [], b"r" * 32),
        (b"x" * 32, 5, 5, [], b"r" * 32),
        (b"x" * 32, -1, 5, [], b"r" * 32),
        (b"x" * 32, 0, 2, [b"short"], b"r" * 32),
    ],
)
def test_malformed_inclusion_inputs_are_rejected(args: tuple[Any, ...]) -> None:
    with pytest.raises(VerificationError):
        merkle.verify_inclusion(*args)


@pytest.mark.parametrize(
    "args",
    [
        (0, 5, [], b"r" * 32, b"s" * 32),
        (5, 4, [b"p" * 32], b"r" * 32, b"s" * 32),
        (3, 3, [b"p" * 32], b"r" * 32, b"r" * 32),
        (3, 3, [], b"r" * 32, b"s" * 32),
        (3, 5, [], b"r" * 32, b"s" * 32),
    ],
)
def test_malformed_consistency_inputs_are_rejected(args: tuple[Any, ...]) -> None:
    with pytest.raises(VerificationError):
        merkle.verify_consistency(*args)
