"""The export format an auditor keeps, and how ``tds audit fetch`` fills it.

An export directory holds everything needed to check a log offline:

* ``manifest.json`` — origin, participant, size, the log's verifier key (vkey), when and
  by whom it was fetched;
* ``entries.jsonl`` — every entry's exact canonical JSON bytes, one per line, in order;
* ``leaf_hashes.txt`` — the Merkle leaf hash of each entry as fetched (base64), so that a
  later change to one entry is pinned to its index;
* ``checkpoints/NNNNNN.note`` — every checkpoint as its exact signed-note text, with the
  cosignatures witnesses added;
* ``directory.json`` — role and signing key of every participant (and ``"revoked": true``
  for those the operator revoked), to check cosignatures and receipts.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector._proto.tds.v1 import audit_pb2, audit_pb2_grpc
from connector.audit import merkle
from connector.audit.checkpoint import Checkpoint, log_origin, open_checkpoint
from connector.audit.note import parse_note, parse_vkey
from connector.audit.service import MAX_PAGE
from connector.errors import ConfigError, VerificationError

__all__ = ["FORMAT", "Export", "fetch_log"]

FORMAT = "tds-log-export/1"


@dataclass(frozen=True)
class Export:
    """An export directory on disk."""

    root: Path

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest, or ``ConfigError`` if this is not an export."""
        path = self.root / "manifest.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{self.root} is not a log export (no manifest.json)") from None
        except ValueError as exc:
            raise VerificationError(f"{path} is not JSON: {exc}") from None
        if data.get("format") != FORMAT:
            raise VerificationError(f"{path} is not a {FORMAT} manifest")
        return data

    def entries(self) -> Iterator[bytes]:
        """Entry bytes in order (without the line break)."""
        with (self.root / "entries.jsonl").open("rb") as fh:
            for line in fh:
                yield line.rstrip(b"\n")

    def leaf_hashes(self) -> Iterator[bytes]:
        """Leaf hashes as recorded at fetch time."""
        with (self.root / "leaf_hashes.txt").open() as fh:
            for line in fh:
                try:
                    yield base64.b64decode(line.strip(), validate=True)
                except ValueError:
                    yield b""

    def checkpoint_files(self) -> list[Path]:
        """Checkpoint notes, oldest first."""
        return sorted((self.root / "checkpoints").glob("*.note"))

    @property
    def directory(self) -> dict[str, dict[str, Any]]:
        """Participant id -> {role, signing_public_key (hex), revoked (when true)}."""
        path = self.root / "directory.json"
        try:
            data: dict[str, dict[str, Any]] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError) as exc:
            raise VerificationError(f"{path} is missing or not JSON: {exc}") from None
        return data


def fetch_log(
    stub: audit_pb2_grpc.AuditServiceStub,
    out: Path,
    *,
    participant: str,
    space: str,
    fetched_by: str,
    directory: dict[str, dict[str, Any]],
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 30.0,
    extends: Checkpoint | None = None,
) -> dict[str, Any]:
    """Fetch a whole log into ``out``; check the entries against the newest checkpoint and,
    for a complete export, that they extend ``extends`` (a checkpoint seen before)."""
    resp = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(fresh=True), timeout=timeout)
    verifier = parse_vkey(resp.vkey)
    if verifier.name != log_origin(space, participant):
        raise VerificationError(f"{participant} presents a log named {verifier.name}")
    key_hex = directory.get(participant, {}).get("signing_public_key")
    if key_hex != verifier.public_key.hex():
        raise VerificationError(f"{participant}'s log key is not its key in the directory")
    latest, _ = open_checkpoint(resp.checkpoint, verifier)
    size = latest.size
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    frontier: list[bytes] = []
    complete = True
    count = 0
    with (
        (out / "entries.jsonl").open("wb") as entries,
        (out / "leaf_hashes.txt").open("w") as leaves,
    ):
        hashes: list[bytes] = []
        for start in range(0, size, MAX_PAGE):
            end = min(start + MAX_PAGE, size)
            page = stub.GetEntries(
                audit_pb2.GetEntriesRequest(start=start, end=end), timeout=timeout
            )
            if len(page.entries) != end - start:
                complete = False  # a non-auditor sees only entries naming it
            for e in page.entries:
                if b"\n" in e.body:
                    raise VerificationError(f"entry {e.index} contains a line break")
                entries.write(e.body + b"\n")
                h = merkle.leaf_hash(e.body)
                leaves.write(base64.b64encode(h).decode() + "\n")
                hashes.append(h)
                count += 1
            if progress:
                progress(end, size)
        if complete:
            frontier = hashes
    if complete and merkle.root(frontier) != latest.root:
        raise VerificationError(
            f"{participant} served entries that do not match its own checkpoint"
        )
    if (
        complete
        and extends is not None
        and (extends.size > size or merkle.root(frontier[: extends.size]) != extends.root)
    ):
        raise VerificationError(
            f"{participant}'s log does not extend the checkpoint of size {extends.size} "
            "you cosigned before (a rollback or a fork): keep both as evidence"
        )
    notes = stub.ListCheckpoints(audit_pb2.ListCheckpointsRequest(), timeout=timeout)
    # Checkpoints signed after the entries were read commit to entries not in this export.
    kept = [n for n in notes.checkpoints if Checkpoint.parse(parse_note(n).text).size <= size]
    for seq, note in enumerate(kept, start=1):
        (out / "checkpoints" / f"{seq:06d}.note").write_text(note)
    (out / "directory.json").write_text(json.dumps(directory, indent=2, sort_keys=True))
    manifest = {
        "format": FORMAT,
        "origin": verifier.name,
        "participant": participant,
        "space": space,
        "vkey": resp.vkey,
        "size": size,
        "entries": count,
        "complete": complete,
        "fetched_at_ms": int(time.time() * 1000),
        "fetched_by": fetched_by,
        "checkpoints": len(kept),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
