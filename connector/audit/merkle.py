"""Merkle trees of RFC 6962 / RFC 9162: hashes, proofs and their verification.

Proof generation is written against a *node source*: a function giving the hash of the
perfect subtree of ``2**level`` leaves starting at leaf ``index << level``. The list
functions below use one computed from leaf hashes; the stored log uses one backed by its
node table, so that roots and proofs cost O(log n) lookups at any size.

Verification raises ``VerificationError`` and never returns a flag to forget.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from connector.errors import VerificationError

__all__ = [
    "HASH_SIZE",
    "NodeSource",
    "consistency_proof",
    "consistency_proof_from",
    "extend_frontier",
    "frontier_root",
    "inclusion_proof",
    "inclusion_proof_from",
    "leaf_hash",
    "node_hash",
    "root",
    "root_from",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
NodeSource = Callable[[int, int], bytes]
"""``(level, index) -> hash`` of a complete subtree of ``2**level`` leaves."""


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_hash(nodes: NodeSource, start: int, size: int) -> bytes:
    """MTH of leaves [start, start + size), ``start`` aligned to the left subtree's size."""
    if size & (size - 1) == 0:
        level = size.bit_length() - 1
        return nodes(level, start >> level)
    k = _split(size)
    return node_hash(nodes(k.bit_length() - 1, start // k), _range_hash(nodes, start + k, size - k))


def root_from(nodes: NodeSource, size: int) -> bytes:
    """Root of the tree of the first ``size`` leaves."""
    if size < 0:
        raise ValueError("tree size must not be negative")
    return EMPTY_ROOT if size == 0 else _range_hash(nodes, 0, size)


def inclusion_proof_from(nodes: NodeSource, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[0:size]), leaf to root order."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} is outside a tree of size {size}")
    proof: list[bytes] = []
    start, m, n = 0, index, size
    while n > 1:
        k = _split(n)
        if m < k:
            proof.append(_range_hash(nodes, start + k, n - k))
            n = k
        else:
            proof.append(nodes(k.bit_length() - 1, start // k))
            start, m, n = start + k, m - k, n - k
    proof.reverse()
    return proof


def consistency_proof_from(nodes: NodeSource, size1: int, size2: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(size1, D[0:size2])."""
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    proof: list[bytes] = []
    start, m, n, complete = 0, size1, size2, True
    while m != n:
        k = _split(n)
        if m <= k:
            proof.append(_range_hash(nodes, start + k, n - k))
            n = k
        else:
            proof.append(nodes(k.bit_length() - 1, start // k))
            start, m, n, complete = start + k, m - k, n - k, False
    if not complete:
        proof.append(_range_hash(nodes, start, m))
    proof.reverse()
    return proof


Frontier = dict[int, bytes]
"""The right edge of a growing tree: level -> hash of its last complete subtree there."""


def extend_frontier(frontier: Frontier, index: int, leaf: bytes) -> list[tuple[int, int, bytes]]:
    """Append leaf ``index``; return every subtree it completes as (level, index, hash)."""
    completed = [(0, index, leaf)]
    h, i, level = leaf, index, 0
    while i & 1:
        h = node_hash(frontier.pop(level), h)
        i >>= 1
        level += 1
        completed.append((level, i, h))
    frontier[level] = h
    return completed


def frontier_root(frontier: Frontier) -> bytes:
    """The root of the tree whose right edge is ``frontier``."""
    r: bytes | None = None
    for level in sorted(frontier):
        r = frontier[level] if r is None else node_hash(frontier[level], r)
    return r if r is not None else EMPTY_ROOT


def _list_source(leaf_hashes: Sequence[bytes]) -> NodeSource:
    cache: dict[tuple[int, int], bytes] = {}

    def nodes(level: int, index: int) -> bytes:
        if level == 0:
            return leaf_hashes[index]
        key = (level, index)
        if key not in cache:
            cache[key] = node_hash(nodes(level - 1, 2 * index), nodes(level - 1, 2 * index + 1))
        return cache[key]

    return nodes


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Root of the tree over ``leaf_hashes``."""
    return root_from(_list_source(leaf_hashes), len(leaf_hashes))


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Inclusion proof of leaf ``index`` in the tree over ``leaf_hashes``."""
    return inclusion_proof_from(_list_source(leaf_hashes), index, len(leaf_hashes))


def consistency_proof(size1: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Consistency proof from the first ``size1`` leaves to all of ``leaf_hashes``."""
    return consistency_proof_from(_list_source(leaf_hashes), size1, len(leaf_hashes))


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise VerificationError(f"{what} must be {HASH_SIZE} bytes")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """RFC 9162 §2.1.3.2: raise unless ``proof`` puts ``leaf`` at ``index`` under the root."""
    _check_hash(leaf, "leaf hash")
    _check_hash(root_hash, "root hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
    if size <= 0:
        raise VerificationError("tree size must be positive for an inclusion proof")
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof is too short for the tree size")
    if r != root_hash:
        raise VerificationError("inclusion proof does not lead to the root hash")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 §2.1.4.2: raise unless ``proof`` shows tree ``size1`` is a prefix of ``size2``."""
    _check_hash(root1, "first root hash")
    _check_hash(root2, "second root hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
    if size1 <= 0:
        raise VerificationError("the first tree size must be positive")
    if size2 < size1:
        raise VerificationError(f"tree size went backwards ({size1} to {size2})")
    if size1 == size2:
        if proof:
            raise VerificationError("a proof between equal sizes must be empty")
        if root1 != root2:
            raise VerificationError("two different roots for the same tree size (a fork)")
        return
    if not proof:
        raise VerificationError("consistency proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root starts the path
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof is too short")
    if fr != root1:
        raise VerificationError("consistency proof does not lead to the first root")
    if sr != root2:
        raise VerificationError("consistency proof does not lead to the second root")
