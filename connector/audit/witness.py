"""Witnessing another participant's log: verify consistency, then cosign.

A witness remembers the last checkpoint it cosigned for each log. It cosigns a newer one
only if the log proves the old tree is a prefix of the new one; a log that shows a
different history (a fork, a rollback, a bad proof) is refused, and the refusal with both
signed checkpoints is kept as evidence.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import audit_pb2
from connector.audit import merkle
from connector.audit.checkpoint import Checkpoint, cosign, open_checkpoint
from connector.audit.note import Verifier, parse_note
from connector.clock import Clock
from connector.errors import VerificationError

__all__ = ["CosignResult", "FileWitnessState", "Witness", "WitnessState"]


@dataclass(frozen=True)
class Seen:
    """The checkpoint a witness last cosigned for a log."""

    checkpoint: Checkpoint
    note: str


class WitnessState(Protocol):
    """Where a witness keeps what it has seen, and the evidence of refusals."""

    def get(self, origin: str) -> Seen | None:
        """The last cosigned checkpoint of ``origin``."""
        ...

    def put(self, origin: str, seen: Seen) -> None:
        """Remember a newly cosigned checkpoint."""
        ...

    def evidence(self, origin: str, record: dict[str, Any]) -> Path | None:
        """Keep evidence of a refused checkpoint; return where, if a file."""
        ...


class FileWitnessState:
    """Witness state in a directory: one JSON file per log, and an evidence folder."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def _path(self, origin: str) -> Path:
        return self._dir / (origin.replace("/", "_") + ".json")

    def get(self, origin: str) -> Seen | None:
        """Read the last cosigned checkpoint of ``origin``."""
        path = self._path(origin)
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        note = raw["note"]
        return Seen(Checkpoint.parse(parse_note(note).text), note)

    def put(self, origin: str, seen: Seen) -> None:
        """Write atomically, so a crash never leaves a half-written state."""
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._path(origin)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {"origin": origin, "size": seen.checkpoint.size, "note": seen.note}, indent=2
            )
        )
        tmp.replace(path)

    def evidence(self, origin: str, record: dict[str, Any]) -> Path:
        """Write a refusal record under ``evidence/``."""
        folder = self._dir / "evidence"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{origin.replace('/', '_')}-{int(time.time() * 1000)}.json"
        path.write_text(json.dumps(record, indent=2))
        return path


@dataclass(frozen=True)
class CosignResult:
    """What a cosigning round ended with."""

    checkpoint: Checkpoint
    note: str
    previous_size: int


class Witness:
    """Cosigns checkpoints of other logs after checking their consistency."""

    def __init__(
        self, name: str, key: ed25519.Ed25519PrivateKey, state: WitnessState, clock: Clock
    ) -> None:
        self.name = name
        self._key = key
        self._state = state
        self._clock = clock

    def last_seen(self, log_key: Verifier) -> Seen | None:
        """The checkpoint of this log last cosigned, if any."""
        return self._state.get(log_key.name)

    def check(self, log_key: Verifier, offer: audit_pb2.Offer) -> tuple[Checkpoint, Seen | None]:
        """Verify an offered checkpoint against what was seen; raise ``VerificationError``."""
        checkpoint, _ = open_checkpoint(offer.checkpoint, log_key)
        seen = self._state.get(log_key.name)
        if seen is not None:
            old = seen.checkpoint
            if checkpoint.size < old.size:
                raise VerificationError(
                    f"log {log_key.name} rolled back from size {old.size} to {checkpoint.size}"
                )
            if old.size > 0:
                merkle.verify_consistency(
                    old.size,
                    checkpoint.size,
                    list(offer.consistency_proof),
                    old.root,
                    checkpoint.root,
                )
        return checkpoint, seen

    def cosign_log(self, stub: Any, log_key: Verifier, timeout: float = 30.0) -> CosignResult:
        """Run one cosigning round against a log's ``AuditService``."""
        outbox: queue.Queue[audit_pb2.CosignRequest | None] = queue.Queue()

        def requests() -> Iterator[audit_pb2.CosignRequest]:
            while (item := outbox.get()) is not None:
                yield item

        seen = self._state.get(log_key.name)
        outbox.put(audit_pb2.CosignRequest(last_seen=seen.note if seen else ""))
        responses = stub.Cosign(requests(), timeout=timeout)
        try:
            first = next(responses)
            if first.WhichOneof("step") != "offer":
                raise VerificationError("the log did not offer a checkpoint")
            try:
                checkpoint, seen = self.check(log_key, first.offer)
            except VerificationError as exc:
                record = {
                    "log": log_key.name,
                    "reason": str(exc),
                    "seen": seen.note if seen else None,
                    "offered": first.offer.checkpoint,
                    "proof": [p.hex() for p in first.offer.consistency_proof],
                }
                where = self._state.evidence(log_key.name, record)
                outbox.put(audit_pb2.CosignRequest(refusal=str(exc)))
                outbox.put(None)
                for _ in responses:
                    pass
                raise VerificationError(
                    f"refused to cosign {log_key.name}: {exc}"
                    + (f" (evidence: {where})" if where else "")
                ) from None
            sig = cosign(checkpoint, self.name, self._key, int(self._clock.now()))
            outbox.put(audit_pb2.CosignRequest(cosignature=sig.line.rstrip("\n")))
            final = next(responses)
            outbox.put(None)
            note = final.cosigned_checkpoint
            parsed = parse_note(note)
            if sig not in parsed.signatures or Checkpoint.parse(parsed.text) != checkpoint:
                raise VerificationError(
                    "the log did not return the checkpoint with our cosignature"
                )
            self._state.put(log_key.name, Seen(checkpoint, note))
            return CosignResult(checkpoint, note, seen.checkpoint.size if seen else 0)
        except StopIteration:
            raise VerificationError("the log ended the cosigning exchange early") from None
        finally:
            outbox.put(None)
