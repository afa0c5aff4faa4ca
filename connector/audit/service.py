"""``AuditService``: checkpoints, entries, proofs and witness cosigning of a connector's log.

Auditors see the whole log; any other member sees only entries that name it. Checkpoints
and consistency proofs reveal nothing but sizes and hashes, so every member may ask. Once
this connector's participant is revoked, only auditors and the operator may read (the
authenticator refuses everyone else, ``Access.EVIDENCE``), and the operator too reads the
whole log: the evidence is what the revocation will be judged by.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import audit_pb2, audit_pb2_grpc
from connector.audit.checkpoint import log_origin, open_checkpoint, verify_cosignature
from connector.audit.note import ALG_COSIGNATURE_V1, Verifier, parse_note, vkey
from connector.errors import InvalidRequest, NotFound, PreconditionFailed, VerificationError
from connector.identity.names import Role
from connector.rpc.auth import Access, Caller, current_caller
from connector.rpc.server import Service

if TYPE_CHECKING:  # the auditor's tools import MAX_PAGE without the database stack
    from connector.audit.log import TransparencyLog

__all__ = ["MAX_PAGE", "AuditServicer", "audit_service"]

log = logging.getLogger(__name__)
MAX_PAGE = 1000

KeyLookup = Callable[[str], ed25519.Ed25519PublicKey]


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Serves one log; ``revoked`` says whether the operator revoked its participant."""

    def __init__(
        self,
        log: TransparencyLog,
        space: str,
        signing_key_of: KeyLookup,
        revoked: Callable[[], bool],
    ) -> None:
        self._log = log
        self._space = space
        self._signing_key_of = signing_key_of
        self._revoked = revoked

    def _reads_everything(self, caller: Caller) -> bool:
        if caller.role == Role.AUDITOR.value:
            return True
        return caller.role == Role.OPERATOR.value and self._revoked()

    def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: Any
    ) -> audit_pb2.GetCheckpointResponse:
        """The latest checkpoint, newly signed if asked and the log grew."""
        stored = self._log.checkpoint(fresh=request.fresh)
        return audit_pb2.GetCheckpointResponse(
            checkpoint=stored.note, vkey=vkey(self._log.verifier)
        )

    def ListCheckpoints(
        self, request: audit_pb2.ListCheckpointsRequest, context: Any
    ) -> audit_pb2.ListCheckpointsResponse:
        """Stored checkpoints, oldest first: every one, or the newest ``newest``."""
        return audit_pb2.ListCheckpointsResponse(
            checkpoints=[c.note for c in self._log.checkpoints(request.newest)]
        )

    def GetEntries(
        self, request: audit_pb2.GetEntriesRequest, context: Any
    ) -> audit_pb2.GetEntriesResponse:
        """Entries in [start, end), at most ``MAX_PAGE`` per call."""
        if request.start < 0 or request.end <= request.start:
            raise InvalidRequest("give 0 <= start < end")
        if request.end - request.start > MAX_PAGE:
            raise InvalidRequest(f"ask for at most {MAX_PAGE} entries per call")
        size = self._log.size
        if request.end > size:
            raise InvalidRequest(f"end {request.end} is past the log size {size}")
        caller = current_caller()
        party = None if self._reads_everything(caller) else caller.participant
        rows = self._log.entries(request.start, request.end, party)
        return audit_pb2.GetEntriesResponse(
            entries=[audit_pb2.LogEntry(index=i, body=b) for i, b in rows]
        )

    def FindEntries(
        self, request: audit_pb2.FindEntriesRequest, context: Any
    ) -> audit_pb2.FindEntriesResponse:
        """Entries newest first by kind, party and time, a bounded stretch per call."""
        if not 1 <= request.limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be 1 to {MAX_PAGE}, not {request.limit}")
        if request.before < 0 or request.since_ms < 0 or request.until_ms < 0:
            raise InvalidRequest("before, since_ms and until_ms cannot be negative")
        if request.until_ms and request.since_ms > request.until_ms:
            raise InvalidRequest("since_ms is after until_ms: no time is in that window")
        if len(request.kind) > 64 or len(request.party) > 63:
            raise InvalidRequest("kind is at most 64 characters, party at most 63")
        caller = current_caller()
        reader = None if self._reads_everything(caller) else caller.participant
        rows, searched_from, size = self._log.find(
            kind=request.kind,
            party=request.party,
            since_ms=request.since_ms,
            until_ms=request.until_ms,
            before=request.before,
            limit=request.limit,
            reader=reader,
        )
        return audit_pb2.FindEntriesResponse(
            entries=[audit_pb2.LogEntry(index=i, body=b) for i, b in rows],
            searched_from=searched_from,
            size=size,
        )

    def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: Any
    ) -> audit_pb2.GetInclusionProofResponse:
        """Inclusion proof of one entry (only for entries the caller may see)."""
        caller = current_caller()
        if not 0 <= request.index < self._log.size:
            raise NotFound(f"no entry {request.index}")
        if not self._reads_everything(caller) and caller.participant not in self._log.entry_parties(
            request.index
        ):
            raise NotFound(f"no entry {request.index}")
        return audit_pb2.GetInclusionProofResponse(
            proof=self._log.inclusion_proof(request.index, request.tree_size)
        )

    def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: Any
    ) -> audit_pb2.GetConsistencyProofResponse:
        """Consistency proof between two tree sizes."""
        return audit_pb2.GetConsistencyProofResponse(
            proof=self._log.consistency_proof(request.first_size, request.second_size)
        )

    def Cosign(
        self, requests: Iterator[audit_pb2.CosignRequest], context: Any
    ) -> Iterator[audit_pb2.CosignResponse]:
        """Offer the newest checkpoint with a consistency proof; store the cosignature."""
        witness = current_caller().participant
        first = next(requests, None)
        if first is None or first.WhichOneof("step") != "last_seen":
            raise InvalidRequest("start cosigning with the checkpoint you last saw (last_seen)")
        last_size = 0
        if first.last_seen:
            seen, _ = open_checkpoint(first.last_seen, self._log.verifier)
            if seen.size > self._log.size:
                raise InvalidRequest(f"last_seen size {seen.size} is past this log's size")
            last_size = seen.size
        stored = self._log.checkpoint(fresh=True)
        proof = (
            self._log.consistency_proof(last_size, stored.checkpoint.size)
            if 0 < last_size < stored.checkpoint.size
            else []
        )
        yield audit_pb2.CosignResponse(
            offer=audit_pb2.Offer(checkpoint=stored.note, consistency_proof=proof)
        )
        answer = next(requests, None)
        if answer is None:
            return
        if answer.WhichOneof("step") == "refusal":
            reason = answer.refusal[:1000]
            log.warning("witness refused to cosign", extra={"witness": witness, "reason": reason})
            self._log.record(
                "audit.cosign_refused",
                parties=[witness],
                data={"witness": witness, "size": stored.checkpoint.size, "reason": reason},
            )
            return
        if answer.WhichOneof("step") != "cosignature":
            raise InvalidRequest("answer the offer with a cosignature or a refusal")
        witness_key = Verifier.ed25519(
            log_origin(self._space, witness), self._signing_key_of(witness), ALG_COSIGNATURE_V1
        )
        try:
            line = parse_note("x\n\n" + answer.cosignature.strip() + "\n").signatures[0]
            verify_cosignature(stored.checkpoint, line, witness_key)
        except VerificationError as exc:
            raise PreconditionFailed(f"cosignature refused: {exc}") from None
        yield audit_pb2.CosignResponse(
            cosigned_checkpoint=self._log.add_cosignature(stored.seq, line)
        )


def audit_service(servicer: AuditServicer) -> Service:
    """``AuditService`` with its access table."""
    reads = [
        "GetCheckpoint",
        "ListCheckpoints",
        "GetEntries",
        "GetInclusionProof",
        "GetConsistencyProof",
        "FindEntries",
    ]
    return Service(
        "tds.v1.AuditService",
        audit_pb2_grpc.add_AuditServiceServicer_to_server,
        servicer,
        # Cosign stores a witness's signature: a revoked connector takes none.
        {**dict.fromkeys(reads, Access.EVIDENCE), "Cosign": Access.MEMBER},
    )
