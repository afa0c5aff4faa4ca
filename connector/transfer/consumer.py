"""The consumer's side of a transfer: receive, verify, sign the receipt, keep the holding.

The connector (not the CLI) receives: it holds the membership token and the signing key,
keeps the data under the agreement's obligations, and resumes from the bytes it holds
after a broken connection or a provider restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import transfer_pb2, transfer_pb2_grpc
from connector.audit import jws
from connector.audit.log import AuditLog, Record
from connector.audit.receipts import Receipt, receipt_id, sign_receipt, verify_receipt
from connector.clock import Clock
from connector.errors import (
    Aborted,
    ConflictError,
    ConnectorError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
    VerificationError,
)
from connector.identifiers import DECISION_ID, TRANSFER_ID, check_text, printable
from connector.negotiation.agreement import Agreement, parse_agreement, revocation_terms
from connector.negotiation.states import State
from connector.negotiation.store import NegotiationStore
from connector.rpc.auth import Caller
from connector.rpc.channel import calling
from connector.transfer.holdings import checked_obligations, holding_path
from connector.transfer.receiving import Assembler
from connector.transfer.store import (
    ACTIVE,
    COMPLETED,
    CONSUMER,
    FAILED,
    STARTED,
    TERMINATED,
    Transfer,
    TransferStore,
)
from connector.transfer.wire import PULL_METHOD, parse_chunk

__all__ = ["Progress", "TransferConsumer"]

log = logging.getLogger(__name__)

_RETRYABLE = (Unavailable, Aborted)


@dataclass(frozen=True)
class Progress:
    """One event of a running transfer, for the admin's progress display."""

    event: str
    """started, receiving, resuming, verified, completed, failed"""
    transfer: Transfer
    received: int = 0
    receipt_id: str = ""
    detail: str = ""


ProgressSink = Callable[[Progress], None]
Fill = Callable[[Transfer, Assembler, ProgressSink], None]
"""Receives a transfer's bytes into its assembler (gRPC pull or push; the DSP binding's
``HttpData`` pull), resuming after breaks."""
Countersign = Callable[[Transfer, str], str]
"""Sends the consumer's signed receipt; the provider's countersigned one."""


def _ignore(_: Progress) -> None:
    return None


class _ParsedAgreements:
    """Our stored agreements as consumer, parsed, by agreement id and the SHA-256 of the
    exact stored text (least recently used go first).

    A computation asks every few milliseconds, and parsing the stored agreement again
    (its JSON, and its payload re-canonicalised to check it is the signed form) was about
    0.4-0.7 ms of each question. The row is still read on every use, so its state and a
    revocation are never remembered; a stored text that changed in any byte is other
    text, parsed (or refused) anew; a text that does not parse is never kept.
    """

    KEEP = 1024

    def __init__(self) -> None:
        self._known: OrderedDict[tuple[str, bytes], Agreement] = OrderedDict()
        self._lock = threading.Lock()

    def parse(self, agreement_id: str, signed: str) -> Agreement:
        """``parse_agreement(signed)``, made once per exact text."""
        key = (agreement_id, hashlib.sha256(signed.encode()).digest())
        with self._lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
                return known
        agreement = parse_agreement(signed)
        with self._lock:
            self._known[key] = agreement
            while len(self._known) > self.KEEP:
                self._known.popitem(last=False)
        return agreement


class TransferConsumer:
    """Receives products under this connector's agreements into its holdings."""

    def __init__(
        self,
        *,
        participant: str,
        store: TransferStore,
        negotiations: NegotiationStore,
        audit: AuditLog,
        clock: Clock,
        signing_key: ed25519.Ed25519PrivateKey,
        keys: jws.KeyLookup,
        channel_to: Callable[[str], grpc.Channel],
        holdings_dir: Path,
        max_chunk_bytes: int,
        resume_for_seconds: float = 60.0,
    ) -> None:
        self._me = participant
        self._store = store
        self._negotiations = negotiations
        self._audit = audit
        self._clock = clock
        self._key = signing_key
        self._keys = keys
        self._channel_to = channel_to
        self._dir = holdings_dir
        self._max_chunk = max_chunk_bytes
        self._resume_for = resume_for_seconds
        self._receiving: dict[str, Assembler] = {}
        self._tellers: dict[str, Callable[[str], None]] = {}
        """How to tell the provider of a transfer started over the DSP binding."""
        self._lock = threading.Lock()
        self._parsed = _ParsedAgreements()

    @property
    def resume_for(self) -> float:
        """How long a transfer may make no progress before it fails."""
        return self._resume_for

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    def _stub(self, provider: str) -> tuple[grpc.Channel, transfer_pb2_grpc.TransferServiceStub]:
        channel = self._channel_to(provider)
        return channel, transfer_pb2_grpc.TransferServiceStub(channel)

    # -- start ------------------------------------------------------------------------

    def agreement_of(self, agreement_id: str) -> Agreement:
        """Our finalized, unrevoked agreement as consumer (transfers and computations)."""
        try:
            n = self._negotiations.by_agreement(agreement_id)
        except NotFound:
            raise NotFound(f"this connector holds no agreement {agreement_id!r}") from None
        if n.role != CONSUMER:
            raise PreconditionFailed(
                f"agreement {agreement_id} is one where this connector is the provider"
            )
        if n.state != State.FINALIZED:
            raise PreconditionFailed(f"agreement {agreement_id} is {n.state.value}, not FINALIZED")
        if n.revocation:
            why = str(revocation_terms(n.revocation).get("reason", ""))
            raise PermissionDenied(
                f"agreement {agreement_id} was revoked by the provider"
                + (f": {why}" if why else "")
            )
        # Our own record, verified when it was countersigned: what the manifest must match.
        # Its state and revocation are read above on every call; only the parse of this
        # exact text is kept.
        agreement = self._parsed.parse(agreement_id, n.agreement or "")
        if agreement.provider != n.counterparty or agreement.consumer != self._me:
            raise PreconditionFailed(f"agreement {agreement_id} is not between us and its provider")
        return agreement

    def _check_manifest(
        self, m: transfer_pb2.TransferManifest, agreement: Agreement, push: bool
    ) -> tuple[Path, dict[str, Any]]:
        """Check every field of the provider's manifest; the partial file it will fill and
        its obligations.

        The manifest comes from the other connector: nothing in it is used (as a path, a
        database key, a log entry) before it is checked here, each identifier against
        its grammar (``connector.identifiers``), and each term the agreement fixes against
        our own copy of the agreement.
        """
        try:
            part = holding_path(self._dir, m.transfer_id, m.format, partial=True)
            DECISION_ID.check(m.decision_id, error=VerificationError)
            for name in m.fields:
                check_text(name, "field", error=VerificationError)
        except VerificationError as exc:
            raise VerificationError(f"the provider's manifest is refused: {exc}") from None
        obligations = checked_obligations(m.obligations_json, agreement)
        permitted = agreement.permitted_fields
        problems = [
            (m.agreement_id != agreement.id, "names another agreement"),
            (
                m.product_id != agreement.product,
                f"is for product {m.product_id[:80]!r}, but agreement {agreement.id} is for "
                f"{agreement.product!r}",
            ),
            (
                0 < agreement.max_bytes < m.size,
                f"has {m.size} bytes, more than the agreement's {agreement.max_bytes}",
            ),
            (
                permitted is not None and not set(m.fields) <= set(permitted),
                "lists fields the agreement does not permit",
            ),
            (m.push != push, "delivers by push" if m.push else "delivers by pull"),
            (m.size < 0, "has a negative size"),
            (
                len(m.sha256) != 64 or any(c not in "0123456789abcdef" for c in m.sha256),
                "has no SHA-256",
            ),
            (not 0 < m.chunk_size <= self._max_chunk, f"has a chunk size of {m.chunk_size}"),
            (not m.format and bool(m.fields), "lists fields for a file"),
            (len(set(m.fields)) != len(m.fields), "lists a field twice"),
            (m.provider_log_index < 0, "has no index in the provider's log"),
        ]
        for bad, what in problems:
            if bad:
                raise VerificationError(f"the provider's manifest {what}")
        return part, obligations

    def start(self, agreement_id: str, push: bool = False) -> Transfer:
        """Ask the provider to start a transfer; record and log its manifest."""
        agreement = self.agreement_of(agreement_id)
        provider = agreement.provider
        channel, stub = self._stub(provider)
        try:
            with calling(provider):
                m = stub.StartTransfer(
                    transfer_pb2.StartTransferRequest(agreement_id=agreement_id, push=push),
                    timeout=600,
                )
        finally:
            channel.close()
        return self.take_manifest(m, agreement, push)

    def take_manifest(
        self, m: transfer_pb2.TransferManifest, agreement: Agreement, push: bool = False
    ) -> Transfer:
        """Check the provider's manifest of a transfer under ``agreement``; record and log
        it (gRPC's ``StartTransfer`` answer, or the DSP binding's start message)."""
        provider = agreement.provider
        agreement_id = agreement.id
        part, obligations = self._check_manifest(m, agreement, push)
        t = Transfer(
            id=m.transfer_id,
            role=CONSUMER,
            agreement_id=agreement_id,
            product=m.product_id,
            counterparty=provider,
            state=STARTED,
            size=m.size,
            sha256=m.sha256,
            chunk_size=m.chunk_size,
            push=m.push,
            format=m.format,
            fields=tuple(m.fields) if m.format else None,
            obligations=obligations,
            decision_id=m.decision_id,
            path=str(part),
            provider_log_index=m.provider_log_index,
            started_ms=self._now_ms(),
        )
        started = {
            "transfer": t.id,
            "agreement": agreement_id,
            "product": t.product,
            "role": CONSUMER,
            "size": t.size,
            "sha256": t.sha256,
            "push": t.push,
            "provider_log_index": t.provider_log_index,
        }
        # Logged in the transaction that records it: a manifest that cannot be recorded
        # (its id is taken) leaves no entry, and no entry is without its record.
        try:
            return self._store.create(
                t, log=self._audit.prepare([("transfer.started", [provider], started)])
            )
        except ConflictError:
            raise VerificationError(
                f"the provider's manifest reuses transfer id {t.id}, which this connector "
                "already holds a record of; the transfer was not started"
            ) from None

    # -- receiving --------------------------------------------------------------------

    def run(
        self,
        agreement_id: str = "",
        *,
        push: bool = False,
        transfer_id: str = "",
        progress: ProgressSink = _ignore,
    ) -> Transfer:
        """Start (or resume) a transfer and see it through to a dual-signed receipt."""
        if transfer_id:
            t = self.to_resume(transfer_id, progress)
            if t.state == COMPLETED:
                return t
        else:
            t = self.start(agreement_id, push)
        progress(Progress("started", t))
        try:
            if t.consumer_log_index < 0:
                t = self._receive(t, progress)
            return self._complete(t, progress)
        except ConnectorError as exc:
            current = self._store.get(t.id)
            progress(Progress("failed", current, current.received, detail=str(exc)))
            raise

    def to_resume(self, transfer_id: str, progress: ProgressSink) -> Transfer:
        """A transfer this connector receives, to resume: started, or completed already
        (reported to ``progress`` as such, nothing to do); ``PreconditionFailed`` for one
        it provides or one that ended otherwise."""
        t = self._store.get(transfer_id)
        if t.role != CONSUMER:
            raise PreconditionFailed(f"transfer {transfer_id} is one this connector provides")
        if t.state == COMPLETED:
            progress(Progress("completed", t, t.size, receipt_id(t.receipt or "")))
        elif t.state != STARTED:
            raise PreconditionFailed(f"transfer {transfer_id} is {t.state} ({t.reason})")
        return t

    def _receive(self, t: Transfer, progress: ProgressSink, fill: Fill | None = None) -> Transfer:
        # Paths come from the transfer's checked id and format, never from its record.
        part = holding_path(self._dir, t.id, t.format, partial=True)
        final = holding_path(self._dir, t.id, t.format)
        try:
            self._dir.mkdir(parents=True, exist_ok=True)  # from configuration only
            asm = Assembler(part, size=t.size, chunk_size=t.chunk_size)
        except OSError as exc:
            raise Unavailable(f"cannot store received data: {exc.strerror}") from None
        with self._lock:
            self._receiving[t.id] = asm
        try:
            try:
                (fill or self._fill)(t, asm, progress)
                try:
                    asm.finish(t.sha256)
                except VerificationError as exc:
                    self._fail(t, f"integrity: {exc}", tell_provider=True)
                    raise
            except ConnectorError:
                # Ended for good (failed or terminated, and logged): no bytes of it stay.
                # Still started (the provider may come back): they stay for a resume.
                if self._store.get(t.id).state != STARTED:
                    asm.close()
                    part.unlink(missing_ok=True)
                raise
        finally:
            with self._lock:
                self._receiving.pop(t.id, None)
            asm.close()
        os.replace(part, final)
        received = {
            "transfer": t.id,
            "agreement": t.agreement_id,
            "size": t.size,
            "sha256": t.sha256,
        }
        t = self._store.update(
            t.id,
            expect=frozenset({STARTED}),
            path=str(final),
            received=t.size,
            log=self._audit.prepare([("transfer.received", [t.counterparty], received)]),
            log_index="consumer_log_index",
        )
        progress(Progress("verified", t, t.size))
        return t

    def _fill(self, t: Transfer, asm: Assembler, progress: ProgressSink) -> None:
        """Receive until complete, resuming after breaks for up to ``resume_for`` seconds."""
        last_progress = time.monotonic()
        reported = 0.0
        while not asm.complete:
            held = asm.received
            channel, stub = self._stub(t.counterparty)
            try:
                with calling(t.counterparty):
                    request = transfer_pb2.PullRequest(transfer_id=t.id, offset=held)
                    if t.push:
                        stub.RequestPush(request, timeout=3600)
                    else:
                        pull = channel.unary_stream(  # chunks as raw bytes: see wire.py
                            PULL_METHOD,
                            request_serializer=transfer_pb2.PullRequest.SerializeToString,
                            response_deserializer=None,
                        )
                        for message in pull(request, timeout=3600):
                            chunk = parse_chunk(message)
                            if chunk.transfer_id != t.id:
                                raise VerificationError(
                                    "the provider sent a chunk of another transfer"
                                )
                            asm.add(chunk.offset, chunk.data)
                            now = time.monotonic()
                            if now - reported >= 0.2:
                                reported = now
                                progress(Progress("receiving", t, asm.received))
            except _RETRYABLE as exc:
                if asm.received > held:
                    last_progress = time.monotonic()
                if time.monotonic() - last_progress > self._resume_for:
                    self._fail(t, f"no progress for {self._resume_for:.0f} s: {exc}")
                    raise
                progress(Progress("resuming", t, asm.received, detail=str(exc)))
                time.sleep(0.5)
                continue
            except VerificationError as exc:
                self._fail(t, f"integrity: {exc}", tell_provider=True)
                raise
            except ConnectorError as exc:  # refused: revoked, terminated, expired ...
                self._end(t, str(exc), received=asm.received)
                raise
            finally:
                channel.close()
            if asm.received > held:
                last_progress = time.monotonic()
            elif not asm.complete:
                self._fail(t, "integrity: the provider ended the stream before the last byte")
                raise VerificationError(
                    f"the provider ended the stream at {asm.received} of {t.size} bytes"
                )
            progress(Progress("receiving", t, asm.received))

    def receive_push(
        self, caller: Caller, chunks: Iterator[transfer_pb2.Chunk]
    ) -> transfer_pb2.PushAck:
        """The provider pushes the bytes of a push transfer we are waiting for."""
        transfer_id = ""
        asm: Assembler | None = None
        for chunk in chunks:
            if asm is None:
                transfer_id = TRANSFER_ID.check(chunk.transfer_id)
                with self._lock:
                    asm = self._receiving.get(transfer_id)
                try:
                    t = self._store.get(transfer_id)
                except NotFound:
                    t = None
                if asm is None or t is None or t.counterparty != caller.participant or not t.push:
                    raise NotFound(f"this connector awaits no push of transfer {transfer_id!r}")
            elif chunk.transfer_id != transfer_id:
                raise InvalidRequest("a push carries chunks of one transfer only")
            asm.add(chunk.offset, chunk.data)
        return transfer_pb2.PushAck(transfer_id=transfer_id, received=asm.received if asm else 0)

    # -- completion ---------------------------------------------------------------------

    def receive_and_complete(
        self,
        t: Transfer,
        progress: ProgressSink,
        *,
        fill: Fill,
        countersign: Countersign,
        tell: Callable[[str], None],
    ) -> Transfer:
        """``run`` for a transfer started elsewhere (the DSP binding): receive with
        ``fill``, verify, sign the receipt and have it countersigned through
        ``countersign``; ``tell`` the provider if it fails here."""
        with self._lock:
            self._tellers[t.id] = tell
        progress(Progress("started", t))
        try:
            if t.consumer_log_index < 0:
                t = self._receive(t, progress, fill)
            return self._complete(t, progress, countersign)
        except ConnectorError as exc:
            current = self._store.get(t.id)
            progress(Progress("failed", current, current.received, detail=str(exc)))
            raise
        finally:
            with self._lock:
                self._tellers.pop(t.id, None)

    def _countersigned(self, t: Transfer, signed: str) -> str:
        """gRPC's ``CompleteTransfer``, retried while the provider cannot be reached."""
        deadline = time.monotonic() + self._resume_for
        while True:
            channel, stub = self._stub(t.counterparty)
            try:
                with calling(t.counterparty):
                    resp = stub.CompleteTransfer(
                        transfer_pb2.CompleteTransferRequest(transfer_id=t.id, receipt=signed),
                        timeout=30,
                    )
                return str(resp.receipt)
            except _RETRYABLE:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
            finally:
                channel.close()

    def _complete(
        self, t: Transfer, progress: ProgressSink, countersign: Countersign | None = None
    ) -> Transfer:
        receipt = Receipt(
            agreement=t.agreement_id,
            transfer=t.id,
            product=t.product,
            provider=t.counterparty,
            consumer=self._me,
            size=t.size,
            sha256=t.sha256,
            started_ms=t.started_ms,
            ended_ms=max(self._now_ms(), t.started_ms),
            provider_log_index=t.provider_log_index,
            consumer_log_index=t.consumer_log_index,
        )
        signed = sign_receipt(receipt, self._key)
        countersigned = (countersign or self._countersigned)(t, signed)
        try:
            got = verify_receipt(countersigned, self._keys)
            # A retried completion returns the receipt the provider countersigned first,
            # whose end time may differ from ours; everything else must be what we signed.
            if dataclasses.replace(got, ended_ms=receipt.ended_ms) != receipt:
                raise VerificationError("the countersigned receipt does not match this transfer")
        except VerificationError as exc:
            # Without the provider's countersignature the data cannot be held under the
            # agreement: the transfer fails and the received copy goes.
            self._fail(t, f"integrity: the provider's receipt: {exc}", tell_provider=True)
            holding_path(self._dir, t.id, t.format).unlink(missing_ok=True)
            raise
        logged = {"transfer": t.id, "agreement": t.agreement_id, "receipt": countersigned}
        t = self._store.update(
            t.id,
            expect=frozenset({STARTED}),
            state=COMPLETED,
            receipt=countersigned,
            ended_ms=got.ended_ms,
            log=self._audit.prepare([("transfer.receipt", [t.counterparty], logged)]),
        )
        progress(Progress("completed", t, t.size, receipt_id(countersigned)))
        return t

    # -- ending -------------------------------------------------------------------------

    def fail(self, t: Transfer, reason: str, *, tell_provider: bool = False) -> None:
        """A transfer received by another path (the DSP binding) failed here."""
        self._fail(t, reason, tell_provider=tell_provider)

    def end(self, t: Transfer, reason: str) -> None:
        """The provider ended a transfer we receive (told over the DSP binding)."""
        self._end(t, reason, received=self._store.get(t.id).received)

    def _end(self, t: Transfer, reason: str, *, received: int) -> None:
        reason = printable(reason, 512)  # it often quotes the provider's error message
        stopped = {
            "transfer": t.id,
            "agreement": t.agreement_id,
            "received": received,
            "reason": reason[:300],
        }
        self._finish(
            t,
            ("transfer.stopped", [t.counterparty], stopped),
            state=TERMINATED,
            reason=reason,
            received=received,
        )

    def _fail(self, t: Transfer, reason: str, *, tell_provider: bool = False) -> None:
        reason = printable(reason, 512)  # it often quotes the provider's error message
        failed = {"transfer": t.id, "agreement": t.agreement_id, "reason": reason[:300]}
        ended = self._finish(
            t, ("transfer.failed", [t.counterparty], failed), state=FAILED, reason=reason
        )
        if ended and tell_provider:
            self._tell_provider(t, reason)

    def _finish(self, t: Transfer, record: Record, **values: Any) -> bool:
        """End an active transfer and log why, in one transaction; False if already ended."""
        try:
            self._store.update(
                t.id,
                expect=ACTIVE,
                ended_ms=self._now_ms(),
                log=self._audit.prepare([record]),
                **values,
            )
        except PreconditionFailed:
            return False
        return True

    def _tell_provider(self, t: Transfer, reason: str) -> None:
        with self._lock:
            tell = self._tellers.get(t.id)
        if tell is not None:  # started over the DSP binding: told over it
            try:
                tell(reason)
            except ConnectorError as exc:
                log.warning(
                    "could not tell the provider", extra={"transfer": t.id, "reason": str(exc)}
                )
            return
        channel, stub = self._stub(t.counterparty)
        try:
            with calling(t.counterparty):
                stub.TerminateTransfer(
                    transfer_pb2.TerminateTransferRequest(transfer_id=t.id, reason=reason[:400]),
                    timeout=15,
                )
        except ConnectorError as exc:
            log.warning("could not tell the provider", extra={"transfer": t.id, "reason": str(exc)})
        finally:
            channel.close()

    def terminate(self, transfer_id: str, reason: str) -> Transfer:
        """Our admin ends a transfer we receive: tell the provider, then end it here."""
        t = self._store.get(transfer_id)
        if t.state not in ACTIVE:
            raise PreconditionFailed(f"transfer {transfer_id} is already {t.state}")
        self._tell_provider(t, reason or "terminated by the consumer")
        self._end(t, reason or "terminated by the consumer", received=t.received)
        # What a receive interrupted by a restart left; a running receive removes its own.
        # (A record from before ids were checked names no file of ours: nothing to remove.)
        with contextlib.suppress(VerificationError):
            holding_path(self._dir, t.id, t.format, partial=True).unlink(missing_ok=True)
        return self._store.get(transfer_id)

    def read(self, transfer_id: str, chunk_size: int) -> Iterator[tuple[int, bytes]]:
        """The bytes of a completed holding (for export)."""
        t = self._store.get(transfer_id)
        if t.role != CONSUMER or t.state != COMPLETED:
            raise PreconditionFailed(f"transfer {transfer_id} is not a completed holding")
        if t.deleted_ms:
            raise PreconditionFailed(f"holding {transfer_id} was deleted under its obligations")
        with holding_path(self._dir, t.id, t.format).open("rb", buffering=0) as f:
            offset = 0
            while block := f.read(chunk_size):
                yield offset, block
                offset += len(block)
