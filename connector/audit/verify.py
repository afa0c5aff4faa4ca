"""Offline checks of exported logs: verify, prove, reconcile, show.

Nothing here talks to a connector: an auditor checks what it fetched, with the keys it
fetched, and names the first index where the evidence goes wrong.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit import merkle
from connector.audit.canonical import parse_canonical
from connector.audit.checkpoint import Checkpoint, open_checkpoint, verify_cosignature
from connector.audit.export import Export
from connector.audit.note import ALG_COSIGNATURE_V1, Verifier, parse_vkey
from connector.audit.receipts import Receipt, verify_receipt
from connector.audit.window_receipts import WindowReceipt, verify_window
from connector.compute.receipt import ComputationReceipt, verify_computation_receipt
from connector.errors import NotFound, VerificationError

__all__ = ["Problem", "VerifyReport", "prove", "receipts_of", "reconcile", "timeline", "verify"]

RECEIPT_KIND = "transfer.receipt"
COMPUTATION_KIND = "compute.receipt"
"""A computation receipt (compute-to-data), countersigned by the consumer."""
WINDOW_KIND = "stream.window"
"""A stream's countersigned window receipt (connector.audit.window_receipts)."""
_FIELDS = {"index", "kind", "time_ms", "actor", "parties", "data"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an export; ``index`` is the entry it concerns, if any."""

    what: str
    index: int | None = None
    checkpoint: str | None = None


@dataclass
class VerifyReport:
    """What ``verify`` found."""

    origin: str
    size: int = 0
    checkpoints: int = 0
    cosignatures: dict[str, int] = field(default_factory=dict)
    receipts: int = 0
    computations: int = 0
    """Computation receipts verified (answers given or received, 可用不可见)."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    @property
    def first_bad_index(self) -> int | None:
        """The lowest entry index a problem names."""
        indices = [p.index for p in self.problems if p.index is not None]
        return min(indices) if indices else None

    def as_json(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "origin": self.origin,
            "ok": self.ok,
            "size": self.size,
            "checkpoints": self.checkpoints,
            "cosignatures": self.cosignatures,
            "receipts": self.receipts,
            "computations": self.computations,
            "first_bad_index": self.first_bad_index,
            "problems": [p.__dict__ for p in self.problems],
        }


def _keys(export: Export) -> Callable[[str], ed25519.Ed25519PublicKey]:
    directory = export.directory

    def key_of(participant: str) -> ed25519.Ed25519PublicKey:
        entry = directory.get(participant)
        if entry is None:
            raise VerificationError(f"{participant} is not in the export's directory")
        return ed25519.Ed25519PublicKey.from_public_bytes(
            bytes.fromhex(entry["signing_public_key"])
        )

    return key_of


def _log_verifier(export: Export) -> Verifier:
    manifest = export.manifest
    verifier = parse_vkey(manifest["vkey"])
    if verifier.name != manifest["origin"]:
        raise VerificationError("the vkey does not name the log's origin")
    known = export.directory.get(manifest["participant"], {}).get("signing_public_key")
    if known != verifier.public_key.hex():
        raise VerificationError("the log's key is not the participant's directory key")
    return verifier


def _check_entry(body: bytes, index: int) -> dict[str, Any]:
    entry = parse_canonical(body, f"entry {index}")
    if not isinstance(entry, dict) or set(entry) != _FIELDS:
        raise VerificationError(f"entry {index} does not have exactly the fields {sorted(_FIELDS)}")
    if entry["index"] != index:
        raise VerificationError(f"entry {index} says it is entry {entry['index']} (moved)")
    if (
        not isinstance(entry["kind"], str)
        or not isinstance(entry["time_ms"], int)
        or not isinstance(entry["parties"], list)
        or not isinstance(entry["data"], dict)
    ):
        raise VerificationError(f"entry {index} has fields of the wrong type")
    return entry


def verify(directory: Path, *, known: list[str] | None = None) -> VerifyReport:
    """Check an export completely; ``known`` are checkpoints seen elsewhere (notes)."""
    export = Export(directory)
    manifest = export.manifest
    report = VerifyReport(origin=manifest.get("origin", "?"))
    if not manifest.get("complete", False):
        report.problems.append(
            Problem(
                f"this export holds only the entries naming {manifest.get('fetched_by')}; only a "
                "complete export (fetched by an auditor) can be verified"
            )
        )
        return report
    try:
        verifier = _log_verifier(export)
        key_of = _keys(export)
    except VerificationError as exc:
        report.problems.append(Problem(str(exc)))
        return report
    checkpoints: list[tuple[str, Checkpoint]] = []
    for path in export.checkpoint_files():
        try:
            cp, note = open_checkpoint(path.read_bytes(), verifier)
        except VerificationError as exc:
            report.problems.append(Problem(f"checkpoint {path.name}: {exc}", checkpoint=path.name))
            continue
        checkpoints.append((path.name, cp))
        for sig in note.signatures:
            if sig.name == verifier.name:
                continue
            witness = sig.name.rsplit("/", 1)[-1]
            try:
                wkey = Verifier.ed25519(sig.name, key_of(witness), ALG_COSIGNATURE_V1)
                verify_cosignature(cp, sig, wkey)
                report.cosignatures[witness] = report.cosignatures.get(witness, 0) + 1
            except VerificationError as exc:
                report.problems.append(
                    Problem(f"checkpoint {path.name}: cosignature: {exc}", checkpoint=path.name)
                )
    report.checkpoints = len(checkpoints)
    for extra in known or []:
        try:
            cp, _ = open_checkpoint(extra, verifier)
            checkpoints.append(("known", cp))
        except VerificationError as exc:
            report.problems.append(Problem(f"known checkpoint: {exc}"))
    _check_checkpoint_order(checkpoints, report)
    by_size: dict[int, list[tuple[str, Checkpoint]]] = {}
    for name, cp in checkpoints:
        by_size.setdefault(cp.size, []).append((name, cp))

    frontier: dict[int, bytes] = {}
    recorded = export.leaf_hashes()
    last_good = 0
    size = 0
    for index, body in enumerate(export.entries()):
        size = index + 1
        leaf = merkle.leaf_hash(body)
        if next(recorded, None) != leaf:
            report.problems.append(Problem(f"entry {index} differs from what was fetched", index))
        try:
            entry = _check_entry(body, index)
            if entry["kind"] == RECEIPT_KIND:
                verify_receipt(str(entry["data"].get("receipt", "")), key_of)
                report.receipts += 1
            elif entry["kind"] == COMPUTATION_KIND:
                verify_computation_receipt(str(entry["data"].get("receipt", "")), key_of)
                report.computations += 1
            elif entry["kind"] == WINDOW_KIND:
                verify_window(str(entry["data"].get("receipt", "")), key_of)
                report.receipts += 1
        except VerificationError as exc:
            report.problems.append(Problem(str(exc), index))
        merkle.extend_frontier(frontier, index, leaf)
        for name, cp in by_size.get(size, []):
            if merkle.frontier_root(frontier) != cp.root:
                # Name the range start only when no entry in it was already pinned down.
                pinned = any(
                    p.index is not None and last_good <= p.index < size for p in report.problems
                )
                report.problems.append(
                    Problem(
                        f"entries {last_good}..{index} do not match checkpoint {name} "
                        f"(size {size})",
                        None if pinned else last_good,
                        name,
                    )
                )
            else:
                last_good = size
    report.size = size
    if manifest.get("size") != size:
        report.problems.append(
            Problem(
                f"the export holds {size} entries but was fetched with {manifest.get('size')}",
                min(size, int(manifest.get("size") or 0)),
            )
        )
    for name, cp in checkpoints:
        if cp.size > size:
            report.problems.append(
                Problem(
                    f"checkpoint {name} commits to {cp.size} entries; the export has {size} "
                    "(truncated log)",
                    size,
                    name,
                )
            )
    if not checkpoints:
        report.problems.append(Problem("the export has no checkpoint to check entries against"))
    return report


def _check_checkpoint_order(
    checkpoints: list[tuple[str, Checkpoint]], report: VerifyReport
) -> None:
    """Same size, other root: a fork. Later checkpoint, smaller size: a rollback."""
    seen: dict[int, tuple[str, bytes]] = {}
    previous: tuple[str, int] | None = None
    for name, cp in checkpoints:
        if cp.size in seen and seen[cp.size][1] != cp.root:
            report.problems.append(
                Problem(
                    f"checkpoints {seen[cp.size][0]} and {name} give two roots for size {cp.size} "
                    "(a fork)",
                    cp.size - 1 if cp.size else None,
                    name,
                )
            )
        seen.setdefault(cp.size, (name, cp.root))
        if name != "known" and previous is not None and cp.size < previous[1]:
            report.problems.append(
                Problem(
                    f"checkpoint {name} (size {cp.size}) is smaller than {previous[0]} "
                    f"(size {previous[1]})",
                    cp.size,
                    name,
                )
            )
        if name != "known":
            previous = (name, cp.size)


def prove(directory: Path, index: int) -> dict[str, Any]:
    """An inclusion proof of entry ``index`` against the export's latest checkpoint."""
    export = Export(directory)
    verifier = _log_verifier(export)
    files = export.checkpoint_files()
    if not files:
        raise VerificationError("the export has no checkpoint")
    cp, _ = open_checkpoint(files[-1].read_bytes(), verifier)
    hashes = [merkle.leaf_hash(b) for b in export.entries()][: cp.size]
    if not 0 <= index < cp.size:
        raise NotFound(f"entry {index} is not under the latest checkpoint (size {cp.size})")
    proof = merkle.inclusion_proof(index, hashes)
    merkle.verify_inclusion(hashes[index], index, cp.size, proof, cp.root)
    return {
        "index": index,
        "tree_size": cp.size,
        "root": base64.b64encode(cp.root).decode(),
        "leaf_hash": base64.b64encode(hashes[index]).decode(),
        "proof": [base64.b64encode(p).decode() for p in proof],
        "checkpoint": files[-1].name,
    }


def _entries(export: Export) -> Iterator[dict[str, Any]]:
    for body in export.entries():
        value = json.loads(body)
        if isinstance(value, dict):
            yield value


def receipts_of(
    directory: Path,
) -> dict[tuple[str, str], tuple[str, Receipt | ComputationReceipt]]:
    """(agreement, transfer or computation) -> (signed receipt, payload) for every receipt
    entry: transfer receipts and computation receipts alike."""
    export = Export(directory)
    key_of = _keys(export)
    found: dict[tuple[str, str], tuple[str, Receipt | ComputationReceipt]] = {}
    for entry in _entries(export):
        signed = str(entry.get("data", {}).get("receipt", ""))
        if entry.get("kind") == RECEIPT_KIND:
            receipt = verify_receipt(signed, key_of)
            found[(receipt.agreement, receipt.transfer)] = (signed, receipt)
        elif entry.get("kind") == COMPUTATION_KIND:
            computed = verify_computation_receipt(signed, key_of)
            found[(computed.agreement, computed.computation)] = (signed, computed)
    return found


def windows_of(directory: Path) -> dict[tuple[str, str], tuple[str, WindowReceipt]]:
    """(agreement, ``window:N``) -> (signed receipt, payload) for every stream window."""
    export = Export(directory)
    key_of = _keys(export)
    found: dict[tuple[str, str], tuple[str, WindowReceipt]] = {}
    for entry in _entries(export):
        if entry.get("kind") == WINDOW_KIND:
            signed = str(entry["data"].get("receipt", ""))
            receipt = verify_window(signed, key_of)
            found[(receipt.agreement, f"window:{receipt.window.index}")] = (signed, receipt)
    return found


def reconcile(dir_a: Path, dir_b: Path) -> dict[str, Any]:
    """Receipts naming both parties must appear identically in both logs: transfers'
    receipts by (agreement, transfer), streams' window receipts by (agreement, window:N)."""
    a, b = Export(dir_a).manifest["participant"], Export(dir_b).manifest["participant"]

    def between(
        found: dict[tuple[str, str], tuple[str, Receipt | ComputationReceipt | WindowReceipt]],
    ) -> dict[tuple[str, str], str]:
        return {k: signed for k, (signed, r) in found.items() if {r.provider, r.consumer} == {a, b}}

    def both(
        directory: Path,
    ) -> dict[tuple[str, str], tuple[str, Receipt | ComputationReceipt | WindowReceipt]]:
        return {**receipts_of(directory), **windows_of(directory)}

    found_a = both(dir_a)
    in_a, in_b = between(found_a), between(both(dir_b))
    only_a = sorted(set(in_a) - set(in_b))
    only_b = sorted(set(in_b) - set(in_a))
    differ = sorted(k for k in set(in_a) & set(in_b) if in_a[k] != in_b[k])
    matched = (set(in_a) & set(in_b)) - set(differ)
    return {
        "a": a,
        "b": b,
        "matched": len(matched),
        "computations": sum(isinstance(found_a[k][1], ComputationReceipt) for k in matched),
        "windows": sum(isinstance(found_a[k][1], WindowReceipt) for k in matched),
        "only_in_a": [list(k) for k in only_a],
        "only_in_b": [list(k) for k in only_b],
        "differ": [list(k) for k in differ],
        "ok": not (only_a or only_b or differ),
    }


def timeline(
    directory: Path,
    *,
    participant: str | None = None,
    product: str | None = None,
    kind: str | None = None,
) -> list[dict[str, Any]]:
    """Entries as readable rows, filtered by participant, product or type prefix."""
    rows = []
    for entry in _entries(Export(directory)):
        data = entry.get("data", {})
        if participant and participant not in entry.get("parties", []):
            continue
        if product and data.get("product") != product:
            continue
        if kind and not str(entry.get("kind", "")).startswith(kind):
            continue
        rows.append(entry)
    return rows
